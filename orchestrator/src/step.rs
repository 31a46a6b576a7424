//! One PPO step after the experience is in: the robust objective turns each sample's K head
//! rewards into one reward (`rrlhf_robust::aggregate`, over the whole batch so that
//! `batch_worst_head` sees the batch); the KL penalty against the reference shapes per-token
//! rewards; GAE gives advantages and returns; then actor and critic `Train` run on their shards
//! of the batch concurrently.

use rrlhf_ppo::{KlController, RewardNorm, gae, per_token_kl, rewards, token_rewards, whiten};
use rrlhf_proto::actor::v1 as actor;
use rrlhf_proto::common::v1::Sequence;
use rrlhf_proto::critic::v1 as critic;
use rrlhf_robust::{HeadOutputs, Strategy, UncertaintySet, aggregate};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tonic::Status;
use tracing::Instrument;

use std::future::Future;

use crate::clients::{Pool, Services, retry, with_deadline};
use crate::config::{PpoSettings, RetrySettings};
use crate::error::{OrchestratorError, Result};
use crate::experience::Rollout;

/// Statistics of the batch's rewards as the robust objective saw them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardStats {
    /// Mean aggregated reward (what PPO optimises), before normalisation/clipping.
    pub aggregated: f32,
    pub nominal: f32,
    pub min: f32,
    pub max: f32,
    pub mean: f32,
    /// Mean over samples of the standard deviation over heads.
    pub head_disagreement: f32,
    /// Mean of nominal − min.
    pub nominal_min_gap: f32,
    /// Fraction of samples whose nominal (smallest σ) head is each head.
    pub nominal_head_frequency: Vec<f32>,
    /// Mean μ of each head.
    pub head_means: Vec<f32>,
}

/// The batch ready for training, and what the step measured while preparing it.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub actor: Vec<actor::TrainSample>,
    pub critic: Vec<critic::TrainSample>,
    pub rewards: RewardStats,
    /// Mean per-sequence KL (sum over tokens of the configured estimator).
    pub kl: f32,
    /// β used for this batch.
    pub beta: f64,
    pub response_length: f32,
}

/// Refuses a batch whose rewards, advantages or returns are not all finite, naming the first
/// offender: training on it would write NaN into the actor and critic.
fn check_finite(
    actor: &[actor::TrainSample],
    critic: &[critic::TrainSample],
    stats: &RewardStats,
) -> Result<()> {
    let bad = |what: &'static str, detail: String| OrchestratorError::NonFinite { what, detail };
    if !stats.aggregated.is_finite() {
        return Err(bad(
            "reward",
            format!("mean aggregated reward {}", stats.aggregated),
        ));
    }
    for (i, s) in actor.iter().enumerate() {
        if let Some(a) = s.advantages.iter().find(|a| !a.is_finite()) {
            return Err(bad("advantages", format!("sample {i}: {a}")));
        }
    }
    for (i, s) in critic.iter().enumerate() {
        if let Some(r) = s.returns.iter().find(|r| !r.is_finite()) {
            return Err(bad("returns", format!("sample {i}: {r}")));
        }
    }
    Ok(())
}

fn mean(xs: impl Iterator<Item = f32>) -> f32 {
    let (sum, n) = xs.fold((0.0f64, 0usize), |(s, n), x| (s + x as f64, n + 1));
    if n == 0 { 0.0 } else { (sum / n as f64) as f32 }
}

/// Applies the robust objective and PPO math to `rollouts`; updates the KL controller and the
/// running reward statistics.
pub fn prepare(
    rollouts: &[Rollout],
    strategy: Strategy,
    set: UncertaintySet,
    seed: u64,
    ppo: &PpoSettings,
    kl_ctl: &mut KlController,
    reward_norm: &mut RewardNorm,
) -> Result<Prepared> {
    let heads: Vec<HeadOutputs> = rollouts
        .iter()
        .map(|r| HeadOutputs {
            mu: r.heads_mu.clone(),
            sigma: r.heads_sigma.clone(),
        })
        .collect();
    let aggregated =
        aggregate(&heads, strategy, set, seed).map_err(OrchestratorError::Objective)?;
    let k = heads.first().map_or(0, HeadOutputs::heads);
    let mut frequency = vec![0f32; k];
    for a in &aggregated {
        frequency[a.summary.nominal_head] += 1.0 / aggregated.len() as f32;
    }
    let stats = RewardStats {
        aggregated: mean(aggregated.iter().map(|a| a.reward)),
        nominal: mean(aggregated.iter().map(|a| a.summary.nominal)),
        min: mean(aggregated.iter().map(|a| a.summary.min)),
        max: mean(aggregated.iter().map(|a| a.summary.max)),
        mean: mean(aggregated.iter().map(|a| a.summary.mean)),
        head_disagreement: mean(
            aggregated
                .iter()
                .map(|a| a.summary.variance.max(0.0).sqrt()),
        ),
        nominal_min_gap: mean(aggregated.iter().map(|a| a.summary.nominal - a.summary.min)),
        nominal_head_frequency: frequency,
        head_means: (0..k)
            .map(|h| mean(rollouts.iter().map(|r| r.heads_mu[h])))
            .collect(),
    };

    let mut scores: Vec<f32> = aggregated.iter().map(|a| a.reward).collect();
    if ppo.normalize_reward {
        reward_norm.update(&scores);
        for s in &mut scores {
            *s = reward_norm.normalize(*s);
        }
    }
    if let Some(limit) = ppo.reward_clip {
        rewards::clip(&mut scores, limit).map_err(OrchestratorError::Ppo)?;
    }

    let beta = kl_ctl.beta();
    let mut seq_kl = Vec::with_capacity(rollouts.len());
    let mut advantages = Vec::with_capacity(rollouts.len());
    let mut returns = Vec::with_capacity(rollouts.len());
    for (r, &score) in rollouts.iter().zip(&scores) {
        let kl = per_token_kl(&r.logprobs, &r.ref_logprobs, ppo.kl_estimator)
            .map_err(OrchestratorError::Ppo)?;
        seq_kl.push(kl.iter().sum::<f32>());
        let token = token_rewards(score, &kl, beta);
        let g =
            gae(&token, &r.values, ppo.gamma, ppo.lambda_gae).map_err(OrchestratorError::Ppo)?;
        advantages.push(g.advantages);
        returns.push(g.returns);
    }
    if ppo.whiten_advantages {
        whiten(&mut advantages);
    }
    let kl = mean(seq_kl.iter().copied());
    kl_ctl.update(kl as f64, rollouts.len());

    let sequence = |i: usize, r: &Rollout| Sequence {
        id: i.to_string(),
        prompt_ids: r.prompt_ids.clone(),
        response_ids: r.response_ids.clone(),
    };
    let actor_samples: Vec<actor::TrainSample> = rollouts
        .iter()
        .zip(advantages)
        .enumerate()
        .map(|(i, (r, adv))| actor::TrainSample {
            sequence: Some(sequence(i, r)),
            old_logprobs: r.logprobs.clone(),
            advantages: adv,
        })
        .collect();
    let critic_samples: Vec<critic::TrainSample> = rollouts
        .iter()
        .zip(returns)
        .enumerate()
        .map(|(i, (r, ret))| critic::TrainSample {
            sequence: Some(sequence(i, r)),
            old_values: r.values.clone(),
            returns: ret,
        })
        .collect();
    check_finite(&actor_samples[..], &critic_samples[..], &stats)?;
    Ok(Prepared {
        actor: actor_samples,
        critic: critic_samples,
        rewards: stats,
        kl,
        beta,
        response_length: mean(rollouts.iter().map(|r| r.response_ids.len() as f32)),
    })
}

/// What the training calls reported, averaged over ranks weighted by shard size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainStats {
    pub policy_loss: f32,
    pub clip_fraction: f32,
    pub approx_kl: f32,
    pub entropy: f32,
    pub actor_grad_norm: f32,
    pub value_loss: f32,
    pub critic_grad_norm: f32,
    /// Rank 0's weight checksum after the update, and the largest difference to it on any
    /// other rank: data-parallel ranks hold identical weights, so the spread must stay 0.
    #[serde(default)]
    pub actor_checksum: f64,
    #[serde(default)]
    pub actor_checksum_spread: f64,
    #[serde(default)]
    pub critic_checksum: f64,
    #[serde(default)]
    pub critic_checksum_spread: f64,
}

impl TrainStats {
    /// Fails with [`OrchestratorError::Diverged`] when a loss, gradient norm or weight checksum
    /// came back non-finite: the update may have written NaN or ∞ into the weights.
    pub fn check_finite(&self) -> Result<()> {
        let values = [
            ("actor policy loss", self.policy_loss as f64),
            ("actor gradient norm", self.actor_grad_norm as f64),
            ("actor weights", self.actor_checksum),
            ("critic value loss", self.value_loss as f64),
            ("critic gradient norm", self.critic_grad_norm as f64),
            ("critic weights", self.critic_checksum),
        ];
        let bad: Vec<String> = values
            .iter()
            .filter(|(_, v)| !v.is_finite())
            .map(|(what, v)| format!("{what} {v}"))
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(OrchestratorError::Diverged {
                detail: bad.join(", "),
            })
        }
    }
}

/// Rank 0's checksum and the largest distance of any rank's from it.
fn checksum_summary(checksums: &[f64]) -> (f64, f64) {
    let first = checksums.first().copied().unwrap_or(0.0);
    let spread = checksums
        .iter()
        .map(|c| (c - first).abs())
        .fold(0.0, f64::max);
    (first, spread)
}

/// Contiguous shards of `items` for `ranks` ranks (some empty when there are fewer items).
fn shards<T: Clone>(items: &[T], ranks: usize) -> Vec<Vec<T>> {
    let size = items.len().div_ceil(ranks.max(1)).max(1);
    (0..ranks)
        .map(|r| items.iter().skip(r * size).take(size).cloned().collect())
        .collect()
}

/// Runs `call` on every rank's shard of `items` concurrently and returns the statistics the
/// ranks report, averaged with their shard sizes as weights, and each rank's weight checksum.
/// Every rank is called, even with an empty shard: data-parallel ranks take each update
/// together. A lone rank's transient failures are retried; a group's are not, because one
/// rank repeating its part would no longer match the others' collectives.
async fn train_ranks<T, C, const K: usize, F, Fut>(
    pool: &Pool<C>,
    items: Vec<T>,
    what: &'static str,
    retry_cfg: &RetrySettings,
    call: F,
) -> Result<([f32; K], Vec<f64>)>
where
    T: Clone + Send + Sync + 'static,
    C: Clone + Send + Sync + 'static,
    F: Fn(C, Vec<T>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<([f32; K], f64), Status>> + Send,
{
    let total = items.len().max(1) as f32;
    let group = pool.len() > 1;
    let mut tasks = JoinSet::new();
    for (rank, shard) in shards(&items, pool.len()).into_iter().enumerate() {
        let (client, call, retry_cfg) = (pool.rank(rank), call.clone(), retry_cfg.clone());
        tasks.spawn(
            async move {
                let weight = shard.len() as f32 / total;
                let (stats, checksum) = if group {
                    call(client, shard)
                        .await
                        .map_err(|e| OrchestratorError::rpc(what, e))?
                } else {
                    retry(&retry_cfg, what, || call(client.clone(), shard.clone())).await?
                };
                Ok::<_, OrchestratorError>((rank, stats.map(|x| x * weight), checksum))
            }
            .in_current_span(),
        );
    }
    let mut mean = [0f32; K];
    let mut checksums = vec![0.0; pool.len()];
    while let Some(r) = tasks.join_next().await {
        let (rank, stats, checksum) =
            r.map_err(|error| OrchestratorError::Task { what, error })??;
        for (m, x) in mean.iter_mut().zip(stats) {
            *m += x;
        }
        checksums[rank] = checksum;
    }
    Ok((mean, checksums))
}

/// Trains actor and critic ranks on their shards, concurrently.
pub async fn train(
    services: &Services,
    retry_cfg: &RetrySettings,
    prepared: Prepared,
    ppo: &PpoSettings,
    seed: u64,
) -> Result<TrainStats> {
    let (a, c) = (ppo.actor.clone(), ppo.critic.clone());
    let deadline = retry_cfg.deadlines.train_secs;
    let actor = train_ranks(
        &services.actor,
        prepared.actor,
        "actor Train",
        retry_cfg,
        move |mut client, samples| {
            let req = actor::TrainRequest {
                samples,
                minibatch_size: a.minibatch_size,
                micro_batch_size: a.micro_batch_size,
                epochs: a.epochs,
                lr: a.lr,
                clip_eps: a.clip,
                entropy_coef: a.entropy_coef,
                max_grad_norm: a.max_grad_norm,
                seed,
            };
            async move {
                let r = client
                    .train(with_deadline(req, deadline))
                    .await?
                    .into_inner();
                Ok((
                    [
                        r.policy_loss_mean,
                        r.clip_fraction,
                        r.approx_kl,
                        r.entropy,
                        r.grad_norm_mean,
                    ],
                    r.param_checksum,
                ))
            }
        },
    );
    let critic = train_ranks(
        &services.critic,
        prepared.critic,
        "critic Train",
        retry_cfg,
        move |mut client, samples| {
            let req = critic::TrainRequest {
                samples,
                minibatch_size: c.minibatch_size,
                micro_batch_size: c.micro_batch_size,
                epochs: c.epochs,
                lr: c.lr,
                value_clip: c.clip,
                max_grad_norm: c.max_grad_norm,
                seed,
            };
            async move {
                let r = client
                    .train(with_deadline(req, deadline))
                    .await?
                    .into_inner();
                Ok(([r.loss_mean, r.grad_norm_mean], r.param_checksum))
            }
        },
    );
    let (
        (
            [
                policy_loss,
                clip_fraction,
                approx_kl,
                entropy,
                actor_grad_norm,
            ],
            actor_checksums,
        ),
        ([value_loss, critic_grad_norm], critic_checksums),
    ) = tokio::try_join!(actor, critic)?;
    let (actor_checksum, actor_checksum_spread) = checksum_summary(&actor_checksums);
    let (critic_checksum, critic_checksum_spread) = checksum_summary(&critic_checksums);
    Ok(TrainStats {
        policy_loss,
        clip_fraction,
        approx_kl,
        entropy,
        actor_grad_norm,
        value_loss,
        critic_grad_norm,
        actor_checksum,
        actor_checksum_spread,
        critic_checksum,
        critic_checksum_spread,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(mu: [f32; 3], sigma: [f32; 3], len: usize) -> Rollout {
        Rollout {
            prompt: "p".into(),
            prompt_ids: vec![1, 2],
            response_ids: vec![3; len],
            response_text: "r".into(),
            finish_reason: "stop".into(),
            logprobs: vec![-1.0; len],
            ref_logprobs: vec![-1.5; len],
            values: vec![0.0; len],
            heads_mu: mu.to_vec(),
            heads_sigma: sigma.to_vec(),
            source_heads: vec![],
        }
    }

    #[test]
    fn tradeoff_reward_is_lambda_nominal_plus_rest_min() {
        let rs = [
            rollout([1.0, -1.0, 0.5], [0.1, 0.5, 0.9], 3),
            rollout([2.0, 0.0, -2.0], [0.9, 0.2, 0.5], 2),
        ];
        let ppo = PpoSettings {
            whiten_advantages: false,
            gamma: 1.0,
            lambda_gae: 1.0,
            ..PpoSettings::default()
        };
        let mut kl = KlController::Fixed { beta: 0.1 };
        let p = prepare(
            &rs,
            "tradeoff:0.4".parse::<Strategy>().unwrap(),
            UncertaintySet::Mean,
            0,
            &ppo,
            &mut kl,
            &mut RewardNorm::default(),
        )
        .unwrap();
        // Sample 0: nominal = 1 (σ 0.1), min = −1 → 0.4·1 + 0.6·(−1) = −0.2.
        // Sample 1: nominal = 0 (σ 0.2), min = −2 → −1.2.
        assert!((p.rewards.aggregated - (-0.2 - 1.2) / 2.0).abs() < 1e-6);
        assert!((p.rewards.nominal - 0.5).abs() < 1e-6);
        assert_eq!(p.rewards.nominal_head_frequency, vec![0.5, 0.5, 0.0]);
        // k1 KL is 0.5 per token; with γ = λ = 1 and V = 0 the first advantage is the return.
        assert!((p.kl - (1.5 + 1.0) / 2.0).abs() < 1e-6);
        let expect0 = -0.2 - 0.1 * 1.5;
        assert!((p.actor[0].advantages[0] - expect0).abs() < 1e-5);
        assert_eq!(p.critic[0].returns, p.actor[0].advantages);
    }

    #[test]
    fn shards_cover_everything_in_order() {
        let items: Vec<u32> = (0..10).collect();
        let s = shards(&items, 3);
        assert_eq!(s.concat(), items);
        assert_eq!(s.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(shards(&items[..1], 2)[1].len(), 0);
    }
}

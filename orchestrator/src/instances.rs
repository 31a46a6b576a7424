//! Which process instance serves each actor and critic rank. A trained service keeps its
//! weights and optimizer state in memory only: when it restarts it comes back, at the same
//! address, with its start weights. The orchestrator would reconnect and go on training them
//! without a word. Each service therefore reports an instance id in `Info` (drawn afresh at
//! every start); the run compares the ids with the ones it knew and, when one changed, reloads
//! its latest checkpoint everywhere before anything else is trained (see `run.rs`). `Info`
//! also says whether a service still holds its start weights, which a new run needs.

use rrlhf_proto::common::v1::RankInfo;
use rrlhf_proto::{actor, critic};

use crate::clients::{Pool, Services, retry, with_deadline};
use crate::config::RetrySettings;
use crate::error::{OrchestratorError, Result};

/// The instance ids of every actor and critic rank, in rank order, and which services still
/// hold the weights they started with on every rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instances {
    actor: Vec<String>,
    critic: Vec<String>,
    actor_at_start: bool,
    critic_at_start: bool,
}

impl Instances {
    /// Asks every actor and critic rank for its instance id (transient failures retried).
    pub async fn observe(services: &Services, retry_cfg: &RetrySettings) -> Result<Self> {
        let deadline = retry_cfg.deadlines.info_secs;
        let (actor, critic) = tokio::try_join!(
            ids(
                &services.actor,
                retry_cfg,
                "actor Info",
                move |mut c| async move {
                    let r = c.info(with_deadline(actor::v1::InfoRequest {}, deadline));
                    Ok(r.await?.into_inner().rank.unwrap_or_default())
                }
            ),
            ids(
                &services.critic,
                retry_cfg,
                "critic Info",
                move |mut c| async move {
                    let r = c.info(with_deadline(critic::v1::InfoRequest {}, deadline));
                    Ok(r.await?.into_inner().rank.unwrap_or_default())
                }
            ),
        )?;
        let at_start = |ranks: &[RankInfo]| ranks.iter().all(|r| r.start_weights);
        let ids = |ranks: Vec<RankInfo>| ranks.into_iter().map(|r| r.instance_id).collect();
        Ok(Self {
            actor_at_start: at_start(&actor),
            critic_at_start: at_start(&critic),
            actor: ids(actor),
            critic: ids(critic),
        })
    }

    /// Whether every actor rank, and every critic rank, holds the weights it started with
    /// (no update and no checkpoint loaded since it started or was reset).
    pub fn at_start(&self) -> (bool, bool) {
        (self.actor_at_start, self.critic_at_start)
    }

    /// The ranks whose instance differs from `self`'s, e.g. `["actor rank 0"]`.
    pub fn restarted(&self, now: &Self) -> Vec<String> {
        let changed = |name: &str, was: &[String], is: &[String]| {
            was.iter()
                .zip(is)
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(|(rank, _)| format!("{name} rank {rank}"))
                .collect::<Vec<_>>()
        };
        let mut out = changed("actor", &self.actor, &now.actor);
        out.extend(changed("critic", &self.critic, &now.critic));
        out
    }

    /// Fails with [`OrchestratorError::Restarted`] when a rank now runs another instance.
    pub async fn ensure_unchanged(
        &self,
        services: &Services,
        retry_cfg: &RetrySettings,
    ) -> Result<()> {
        let now = Self::observe(services, retry_cfg).await?;
        let restarted = self.restarted(&now);
        if restarted.is_empty() {
            Ok(())
        } else {
            Err(OrchestratorError::Restarted {
                services: restarted,
            })
        }
    }
}

async fn ids<C, F, Fut>(
    pool: &Pool<C>,
    retry_cfg: &RetrySettings,
    what: &str,
    call: F,
) -> Result<Vec<RankInfo>>
where
    C: Clone,
    F: Fn(C) -> Fut,
    Fut: Future<Output = std::result::Result<RankInfo, tonic::Status>>,
{
    let mut out = Vec::with_capacity(pool.len());
    for rank in 0..pool.len() {
        out.push(retry(retry_cfg, what, || call(pool.rank(rank))).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarted_names_the_ranks_whose_instance_changed() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let was = Instances {
            actor: s(&["a0", "a1"]),
            critic: s(&["c0"]),
            actor_at_start: true,
            critic_at_start: true,
        };
        assert!(was.restarted(&was.clone()).is_empty());
        let now = Instances {
            actor: s(&["a0", "A1"]),
            critic: s(&["C0"]),
            ..was.clone()
        };
        assert_eq!(was.restarted(&now), vec!["actor rank 1", "critic rank 0"]);
    }
}

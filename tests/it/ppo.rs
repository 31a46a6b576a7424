//! A few PPO steps for `tradeoff` and `min`: the metrics show the robust objective at work.

use rrlhf_testkit::cluster::{cluster, config, metrics_of, resume_to_the_end, run_to_the_end};
use tch::Tensor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ppo_steps_apply_the_robust_objective() {
    let out = tempfile::tempdir().unwrap();
    let cluster = cluster().await;
    for (id, strategy) in [("tradeoff", "tradeoff:0.4"), ("min", "min")] {
        let mut cfg = config(&cluster, out.path(), id, 2);
        cfg.objective.strategy = strategy.parse().unwrap();
        run_to_the_end(cfg).await;
        let m = metrics_of(out.path(), id);
        assert_eq!(m.iter().map(|m| m.step).collect::<Vec<_>>(), vec![1, 2]);
        for s in &m {
            let r = &s.rewards;
            let expected = match id {
                // Linear in each sample, so it holds for the batch means too.
                "tradeoff" => 0.4 * r.nominal + 0.6 * r.min,
                _ => r.min,
            };
            assert!((r.aggregated - expected).abs() < 1e-5, "{id}: {r:?}");
            assert!(r.nominal >= r.min && r.max >= r.nominal);
            assert!(r.head_disagreement > 0.0, "3 spread-out heads disagree");
            assert!((r.nominal_min_gap - (r.nominal - r.min)).abs() < 1e-5);
            assert_eq!(r.nominal_head_frequency.len(), 3);
            assert!((r.nominal_head_frequency.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(s.kl.is_finite() && s.train.policy_loss.is_finite());
            assert!(s.train.value_loss > 0.0 && s.response_length >= 1.0);
            assert_eq!(s.strategy.to_string(), strategy);
        }
        // Training moved the policy away from the reference.
        assert!(m[1].kl.abs() > 0.0);
        let dir = out.path().join(id);
        for f in [
            "report.md",
            "config.json",
            "plots/rewards.png",
            "plots/kl.png",
            "plots/length.png",
        ] {
            assert!(dir.join(f).exists(), "{f}");
        }
        let latest = std::fs::read_to_string(dir.join("checkpoints/latest")).unwrap();
        let ckpt = dir.join("checkpoints").join(latest.trim());
        for f in [
            "state.json",
            "actor/model.safetensors",
            "actor/optimizer.safetensors",
            "critic/model.safetensors",
        ] {
            assert!(ckpt.join(f).exists(), "{f}");
        }
    }
    cluster.stop().await;
}

/// PPO steps with a 2-rank actor and a 2-rank critic (c10d over Gloo on loopback): each rank
/// trains on half of every batch and they average gradients, so both ranks of each hold the
/// same weights after every step (checksum spread 0, equal log-probs); the checkpoint rank 0
/// saved loads back into both ranks. Two reference and reward replicas share the scoring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_parallel_ranks_train_in_step() {
    use rrlhf_proto::actor::v1::actor_service_client::ActorServiceClient;
    use rrlhf_proto::common::v1::{LoadCheckpointRequest, LogProbsRequest, Sequence};

    let out = tempfile::tempdir().unwrap();
    let cluster = rrlhf_embedded::Cluster::with_replicas(
        &rrlhf_testkit::cluster::dirs(),
        &rrlhf_embedded::Options::default(),
        2,
    )
    .await
    .unwrap();
    let endpoints = cluster.endpoints(None);
    assert_eq!(endpoints.actor.len(), 2);
    assert_eq!(endpoints.critic.len(), 2);
    assert_eq!(endpoints.reward.len(), 2);
    let mut cfg = config(&cluster, out.path(), "ranks", 2);
    cfg.endpoints = endpoints.clone();
    run_to_the_end(cfg).await;
    let m = metrics_of(out.path(), "ranks");
    assert_eq!(m.len(), 2);
    for s in &m {
        let t = &s.train;
        assert!(t.actor_checksum.is_finite() && t.actor_checksum != 0.0);
        assert_eq!(t.actor_checksum_spread, 0.0, "actor ranks drifted: {t:?}");
        assert_eq!(t.critic_checksum_spread, 0.0, "critic ranks drifted: {t:?}");
    }
    assert_ne!(
        m[0].train.actor_checksum, m[1].train.actor_checksum,
        "the ranks trained"
    );

    // Resuming loads the step-2 checkpoint into both ranks of each group at once, and a third
    // step follows in step.
    let mut more = config(&cluster, out.path(), "ranks", 3);
    more.endpoints = endpoints.clone();
    resume_to_the_end(more).await;
    let m = metrics_of(out.path(), "ranks");
    assert_eq!(m.iter().map(|s| s.step).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(m[2].train.actor_checksum_spread, 0.0);
    assert_eq!(m[2].train.critic_checksum_spread, 0.0);

    let seq = Sequence {
        id: "probe".into(),
        prompt_ids: vec![1, 2, 3],
        response_ids: vec![4, 5],
    };
    let probe = || async {
        let mut lps = Vec::new();
        for url in &endpoints.actor {
            let mut c = ActorServiceClient::connect(url.clone()).await.unwrap();
            let r = c
                .log_probs(LogProbsRequest {
                    sequences: vec![seq.clone()],
                })
                .await
                .unwrap()
                .into_inner();
            lps.push(r.results[0].logprobs.clone());
        }
        lps
    };
    let trained = probe().await;
    assert_eq!(trained[0], trained[1], "both ranks hold the same weights");

    // Loading the SFT weights (a directory only rank 0 needs to read) resets both ranks.
    let load = |url: String, path: String| async move {
        let mut c = ActorServiceClient::connect(url).await.unwrap();
        c.load_checkpoint(LoadCheckpointRequest {
            path,
            start_weights: false,
        })
        .await
    };
    let sft = rrlhf_testkit::models::models().policy.display().to_string();
    let (a, b) = tokio::join!(
        load(endpoints.actor[0].clone(), sft.clone()),
        load(
            endpoints.actor[1].clone(),
            "/nonexistent/on/this/rank".into()
        ),
    );
    a.unwrap();
    b.unwrap();
    let reset = probe().await;
    assert_eq!(reset[0], reset[1]);
    assert_ne!(reset[0], trained[0], "the SFT weights are back");

    // A path rank 0 cannot read fails on every rank, and leaves both usable and equal.
    let (a, b) = tokio::join!(
        load(endpoints.actor[0].clone(), "/nonexistent".into()),
        load(endpoints.actor[1].clone(), "/nonexistent".into()),
    );
    assert_eq!(a.unwrap_err().code(), tonic::Code::InvalidArgument);
    let b = b.unwrap_err();
    assert!(b.message().contains("rank 0 could not load"), "{b:?}");
    assert_eq!(probe().await, reset);
    cluster.stop().await;
}

/// The same 2-rank groups under ZeRO-2: the actor's and critic's AdamW state is sharded over
/// the ranks, yet the ranks stay identical after every step, the checkpoint holds the whole
/// optimizer state (gathered to rank 0, in the replicated format), and a resumed run scatters
/// it back and continues in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero2_ranks_train_save_and_resume_in_step() {
    let out = tempfile::tempdir().unwrap();
    let options = rrlhf_embedded::Options {
        zero_stage: 2,
        ..Default::default()
    };
    let cluster =
        rrlhf_embedded::Cluster::with_replicas(&rrlhf_testkit::cluster::dirs(), &options, 2)
            .await
            .unwrap();
    let endpoints = cluster.endpoints(None);
    let mut cfg = config(&cluster, out.path(), "zero", 2);
    cfg.endpoints = endpoints.clone();
    run_to_the_end(cfg).await;
    let ckpt = out.path().join("zero/checkpoints/step-000002");
    for svc in ["actor", "critic"] {
        let state = Tensor::read_safetensors(ckpt.join(svc).join("optimizer.safetensors"))
            .unwrap_or_else(|e| panic!("{svc}: the gathered optimizer state: {e}"));
        let step = state
            .iter()
            .find(|(n, _)| n == "step")
            .expect("step")
            .1
            .int64_value(&[0]);
        assert!(step > 0, "{svc}: {step} updates");
        // Both moments of every weight, whole (not one rank's shard).
        let weights = Tensor::read_safetensors(ckpt.join(svc).join("model.safetensors")).unwrap();
        let moments = state
            .iter()
            .filter(|(n, _)| n.starts_with("exp_avg"))
            .count();
        assert!(moments >= 2 * weights.len() - 2, "{svc}: {moments} moments");
        for (name, t) in &weights {
            if let Some((_, m)) = state.iter().find(|(n, _)| *n == format!("exp_avg.{name}")) {
                assert_eq!(m.size(), t.size(), "{svc}: {name}");
            }
        }
    }
    let mut more = config(&cluster, out.path(), "zero", 3);
    more.endpoints = endpoints;
    resume_to_the_end(more).await;
    let m = metrics_of(out.path(), "zero");
    assert_eq!(m.iter().map(|s| s.step).collect::<Vec<_>>(), vec![1, 2, 3]);
    for s in &m {
        assert_eq!(
            s.train.actor_checksum_spread, 0.0,
            "actor ranks drifted: {s:?}"
        );
        assert_eq!(s.train.critic_checksum_spread, 0.0, "critic ranks drifted");
    }
    assert_ne!(m[1].train.actor_checksum, m[2].train.actor_checksum);
    cluster.stop().await;
}

/// Reference log-probs, critic values and rewards fetched in calls of several sequences give
/// the steps that one call per sample gives, within 1e-4: the same rewards, KL, losses; so do
/// chunks spread over two reward streams. And with sampling that reshapes the distribution (a
/// masked EOS), the policy log-probs the actor reports give the steps that recomputing them
/// with an actor `LogProbs` pass gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_experience_calls_give_the_per_sample_steps() {
    use rrlhf_proto::actor::v1::actor_service_client::ActorServiceClient;
    use rrlhf_proto::common::v1::LoadCheckpointRequest;
    use rrlhf_proto::critic::v1::critic_service_client::CriticServiceClient;

    let out = tempfile::tempdir().unwrap();
    let cluster = cluster().await;
    let dirs = rrlhf_testkit::cluster::dirs();
    let endpoints = cluster.endpoints(None);
    let mut runs = Vec::new();
    // (id, sequences per call, reward streams, min_new_tokens, recompute the log-probs)
    let settings = [
        ("single", 1, 1, 0, false),
        ("chunks", 3, 1, 0, false),
        ("spread", 3, 2, 0, false),
        ("reported", 3, 1, 3, false),
        ("recomputed", 3, 1, 3, true),
    ];
    for (id, per_call, streams, min_new, recompute) in settings {
        // Every run starts from the same weights and fresh optimizers.
        let path = |d: &std::path::Path| d.display().to_string();
        ActorServiceClient::connect(endpoints.actor[0].clone())
            .await
            .unwrap()
            .load_checkpoint(LoadCheckpointRequest {
                path: path(&dirs.policy),
                start_weights: false,
            })
            .await
            .unwrap();
        CriticServiceClient::connect(endpoints.critic[0].clone())
            .await
            .unwrap()
            .load_checkpoint(LoadCheckpointRequest {
                path: path(&dirs.critic),
                start_weights: false,
            })
            .await
            .unwrap();
        let mut cfg = config(&cluster, out.path(), id, 2);
        cfg.run.sequences_per_call = per_call;
        // The same service listed twice: two replicas as the orchestrator sees them.
        cfg.endpoints.reward = vec![endpoints.reward[0].clone(); streams];
        cfg.sampling.min_new_tokens = min_new;
        cfg.sampling.recompute_logprobs = recompute;
        run_to_the_end(cfg).await;
        runs.push(metrics_of(out.path(), id));
    }
    for (x, y) in [(0, 1), (0, 2), (3, 4)] {
        assert_eq!(runs[y].len(), 2);
        for (a, b) in runs[x].iter().zip(&runs[y]) {
            let close = |what: &str, p: f32, q: f32| {
                assert!(
                    (p - q).abs() <= 1e-4,
                    "{} vs {}, step {}: {what} {p} vs {q}",
                    settings[x].0,
                    settings[y].0,
                    a.step
                );
            };
            close("reward", a.rewards.aggregated, b.rewards.aggregated);
            close("KL", a.kl, b.kl);
            close("policy loss", a.train.policy_loss, b.train.policy_loss);
            close("value loss", a.train.value_loss, b.train.value_loss);
        }
    }
    cluster.stop().await;
}

//! Heterologous reward fusion in PPO: a harmlessness BRME (3 heads) and a helpfulness
//! Bradley–Terry RM (1 head, σ = 0) served by two reward services score every sample; their
//! heads, z-normalised with each source's calibration (one from the config, one from what the
//! service reports), form one uncertainty set that the run's strategy aggregates.

use rrlhf_embedded::{Options, reward_config, start_reward};
use rrlhf_orchestrator::run::{RunOptions, RunStatus, spawn_run};
use rrlhf_orchestrator::sources::{CalibrationSetting, RewardSource};
use rrlhf_proto::reward::v1::reward_service_client::RewardServiceClient;
use rrlhf_proto::reward::v1::{Sample, ScoreRequest};
use rrlhf_robust::HeadOutputs;
use rrlhf_robust::fusion::{Calibration, fuse_heads};
use rrlhf_testkit::cluster::{cluster, config, dirs, metrics_of};

/// A copy of the reward model at `src` in `dst` whose `config.json` records `calibration`, as
/// `rrlhf rm calibrate` leaves it.
fn calibrated_copy(src: &std::path::Path, dst: &std::path::Path, mean: f32, std: f32) {
    use rrlhf_model::reward_model::REWARD_KEY;

    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dst.join(path.file_name().unwrap())).unwrap();
        }
    }
    let cfg_path = dst.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg[REWARD_KEY]["calibration"] = serde_json::json!({
        "mean": mean, "std": std, "count": 64, "reference": "test pairs",
    });
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 * (1.0 + a.abs().max(b.abs()))
}

/// Each head's (μ, σ) of `prompt`/`response` as the reward service at `url` scores them.
async fn heads_of(url: &str, prompt: &str, response: &str) -> HeadOutputs {
    let mut c = RewardServiceClient::connect(url.to_owned()).await.unwrap();
    let r = c
        .score(ScoreRequest {
            samples: vec![Sample {
                id: "x".into(),
                prompt: prompt.into(),
                response: response.into(),
                token_ids: vec![],
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let heads = &r.scores[0].heads;
    HeadOutputs {
        mu: heads.iter().map(|h| h.mu).collect(),
        sigma: heads.iter().map(|h| h.sigma).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reward_sources_are_normalised_and_fused() {
    let out = tempfile::tempdir().unwrap();
    let helpful_dir = out.path().join("helpful-rm");
    calibrated_copy(&dirs().critic, &helpful_dir, 0.2, 0.25);
    let cluster = cluster().await;
    let helpful = start_reward(reward_config(
        &helpful_dir,
        "127.0.0.1:0",
        &Options::default(),
    ))
    .await
    .unwrap();

    let harmless_cal = Calibration {
        mean: 0.1,
        std: 0.5,
        count: 0,
    };
    let mut cfg = config(&cluster, out.path(), "fused", 2);
    cfg.objective.strategy = "mean".parse().unwrap();
    cfg.endpoints.reward_name = Some("harmless".into());
    // The kit's BRME is not calibrated: the config gives its statistics.
    cfg.endpoints.reward_calibration = Some(CalibrationSetting {
        mean: harmless_cal.mean,
        std: harmless_cal.std,
    });
    cfg.endpoints.extra_rewards = vec![RewardSource {
        name: "helpful".into(),
        urls: vec![helpful.url()],
        calibration: None,
    }];
    let run = spawn_run(cfg.clone(), RunOptions::default()).unwrap();
    assert_eq!(
        run.finished().await,
        RunStatus::Finished,
        "{:?}",
        run.info().error
    );

    let helpful_cal = Calibration {
        mean: 0.2,
        std: 0.25,
        count: 64,
    };
    let m = metrics_of(out.path(), "fused");
    assert_eq!(m.len(), 2);
    for s in &m {
        let src = &s.sources;
        let names: Vec<&str> = src.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["harmless", "helpful"]);
        assert_eq!((src[0].heads, src[1].heads), (3, 1));
        assert_eq!(src[0].calibration, harmless_cal);
        assert_eq!(src[1].calibration, helpful_cal, "as its service reports it");
        let r = &s.rewards;
        assert_eq!(r.head_means.len(), 4, "one set of 3 + 1 heads");
        // The fused heads are each source's heads normalised with its calibration (linear,
        // so it holds for the batch means too).
        let raw: Vec<(Calibration, f32)> = src
            .iter()
            .flat_map(|x| x.head_means.iter().map(move |&h| (x.calibration, h)))
            .collect();
        for (h, (cal, mu)) in raw.iter().enumerate() {
            assert!(
                close(r.head_means[h], cal.normalize(*mu)),
                "head {h}: {s:?}"
            );
        }
        // `mean` aggregates the fused set: the batch mean is the mean of the head means.
        let fused_mean = r.head_means.iter().sum::<f32>() / 4.0;
        assert!(close(r.aggregated, fused_mean), "{r:?}");
        assert!(close(r.mean, r.aggregated));
        // σ is normalised with μ; the Bradley–Terry head (σ = 0) is the most confident one of
        // every sample, so the fused nominal reward is the helpful source's, normalised.
        assert_eq!((src[0].nominal_share, src[1].nominal_share), (0.0, 1.0));
        assert!(close(r.nominal, src[1].mean_nominal_normalized), "{s:?}");
        for x in src {
            assert!(close(
                x.mean_nominal_normalized,
                x.calibration.normalize(x.mean_nominal)
            ));
        }
        assert!(r.head_disagreement > 0.0);
    }

    // The report shows each source on its own scale and on the fused one: a table and a plot.
    let run_dir = out.path().join("fused");
    let report = std::fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(
        report.contains("| harmless | 3 | 0.1000 ± 0.5000 |"),
        "{report}"
    );
    assert!(
        report.contains("| helpful | 1 | 0.2000 ± 0.2500 |"),
        "{report}"
    );
    assert!(run_dir.join("plots/sources.png").is_file());

    // The kept samples' heads are what fuse computes from each service's own answer.
    let kept = run.samples(None, 8).unwrap();
    assert!(!kept.is_empty());
    let primary = cfg.endpoints.reward[0].clone();
    let mut checked = 0;
    for sample in kept.iter().filter(|s| !s.response.trim().is_empty()) {
        let a = heads_of(&primary, &sample.prompt, &sample.response).await;
        let b = heads_of(&helpful.url(), &sample.prompt, &sample.response).await;
        let fused = fuse_heads(&[(harmless_cal, &a), (helpful_cal, &b)]);
        for (x, y) in fused.mu.iter().zip(&sample.head_rewards) {
            assert!(close(*x, *y), "{fused:?} vs {sample:?}");
        }
        for (x, y) in fused.sigma.iter().zip(&sample.head_sigmas) {
            assert!(close(*x, *y), "{fused:?} vs {sample:?}");
        }
        checked += 1;
    }
    assert!(checked > 0, "no sample with a response text");

    // Without any calibration for the BRME, the run stops before its first step, naming it.
    let mut bad = config(&cluster, out.path(), "uncalibrated", 1);
    bad.endpoints.reward_name = Some("harmless".into());
    bad.endpoints.extra_rewards = cfg.endpoints.extra_rewards.clone();
    let run = spawn_run(bad, RunOptions::default()).unwrap();
    assert_eq!(run.finished().await, RunStatus::Failed);
    let error = run.info().error.unwrap_or_default();
    assert!(
        error.starts_with("endpoints.reward_calibration")
            && error.contains("`harmless` has no calibration"),
        "{error}"
    );
    assert!(metrics_of(out.path(), "uncalibrated").is_empty());

    helpful.stop().await;
    cluster.stop().await;
}

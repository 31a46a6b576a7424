//! A reduced toy run (few seeds, short training): the outputs' shape and invariants — never the
//! experiment's conclusions.

use rrlhf_robust::Lambda;
use rrlhf_toy::bandit::PpoSettings;
use rrlhf_toy::experiment::Ensemble;
use rrlhf_toy::experiment::ToyConfig;
use rrlhf_toy::reward::{HeadData, RewardModel, RmArch, preferences, rows};

fn small(arch: RmArch) -> ToyConfig {
    ToyConfig {
        seeds: 3,
        first_seed: 11,
        rm_arch: arch,
        rm_steps: 40,
        lambdas: vec![Lambda::new(0.4).unwrap(), Lambda::new(0.0).unwrap()],
        ppo: PpoSettings {
            iterations: 6,
            samples_per_prompt: 8,
            ..PpoSettings::default()
        },
        ..ToyConfig::default()
    }
}

#[test]
fn reduced_run_has_the_right_shape_and_is_reproducible() {
    for arch in [RmArch::PerPrompt, RmArch::Joint] {
        let cfg = small(arch);
        let r = rrlhf_toy::run(&cfg, |_| {}).unwrap();
        let names: Vec<&str> = r.conditions.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "standard (λ=1)",
                "deep-ens λ=0.4",
                "deep-ens λ=0",
                "deep-ens mean",
                "deep-ens UWO c=0.5",
                "deep-ens UWO c=2",
                "multi-head head 0 (λ=1)",
                "multi-head λ=0.4",
                "multi-head mean",
                "multi-head UWO c=0.5",
                "multi-head UWO c=2",
            ]
        );
        let conds = r.conditions.len();
        assert_eq!(
            r.ensembles.iter().map(|e| e.ensemble).collect::<Vec<_>>(),
            [Ensemble::DeepEns, Ensemble::MultiHead]
        );
        for e in &r.ensembles {
            assert!((0.0..=1.0).contains(&e.member_accuracy));
            assert!(e.var_covered >= 0.0 && e.var_uncovered >= 0.0);
        }
        // λ=0.4, λ=0 and two UWO per ensemble against that ensemble's mean.
        assert_eq!(r.vs_mean.len(), 4 + 3);
        assert!(r.vs_mean.iter().all(|c| c.b.ends_with(" mean")));
        // Every multi-head condition has a deep-ensemble twin with the same strategy.
        let twins: Vec<(&str, &str)> = r
            .multi_vs_deep
            .iter()
            .map(|c| (c.a.as_str(), c.b.as_str()))
            .collect();
        assert_eq!(
            twins,
            [
                ("multi-head head 0 (λ=1)", "standard (λ=1)"),
                ("multi-head λ=0.4", "deep-ens λ=0.4"),
                ("multi-head mean", "deep-ens mean"),
                ("multi-head UWO c=0.5", "deep-ens UWO c=0.5"),
                ("multi-head UWO c=2", "deep-ens UWO c=2"),
            ]
        );
        for c in r.vs_mean.iter().chain(&r.multi_vs_deep) {
            assert_eq!(c.wins + c.losses + c.ties, 3);
        }
        assert_eq!(
            r.seeds.iter().map(|s| s.seed).collect::<Vec<_>>(),
            vec![11, 12, 13]
        );
        for s in &r.seeds {
            assert_eq!(s.members.len(), 2);
            for m in &s.members {
                assert_eq!(m.correct.len(), 4, "nominal + 3 extra RMs, or 4 heads");
            }
            assert_eq!(s.outcomes.len(), conds);
            assert!(
                s.outcomes
                    .iter()
                    .all(|o| o.correct <= 8 && o.reward_correct <= 8)
            );
        }
        for c in &r.conditions {
            assert_eq!(c.wins + c.losses + c.ties, 3);
            assert!((0.0..=8.0).contains(&c.correct_mean));
            assert!((0.0..=1.0).contains(&c.all_correct) && (0.0..=1.0).contains(&c.sign_test_p));
        }
        assert_eq!(
            (r.conditions[0].wins, r.conditions[0].losses),
            (0, 0),
            "standard vs itself"
        );
        let tables = r.seeds[0]
            .tables
            .as_ref()
            .expect("first seed keeps its tables");
        assert_eq!((tables.rms.len(), tables.heads.len()), (4, 4));
        assert_eq!(tables.policies.len(), conds);
        for p in &tables.policies {
            for row in p {
                assert!(
                    (row.iter().sum::<f32>() - 1.0).abs() < 1e-4,
                    "π rows are distributions"
                );
            }
        }
        // Paired seeds: the same configuration gives the same numbers.
        assert_eq!(rrlhf_toy::run(&cfg, |_| {}).unwrap(), r);

        let dir = tempfile::tempdir().unwrap();
        rrlhf_toy::report::write(dir.path(), &r).unwrap();
        for f in [
            "toy.json",
            "toy.md",
            "toy-rms.png",
            "toy-heads.png",
            "toy-actors.png",
        ] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        let md = std::fs::read_to_string(dir.path().join("toy.md")).unwrap();
        assert_eq!(
            md.matches("\n| ").count(),
            (1 + 2) + (1 + conds) + (1 + 7) + (1 + 5),
            "a header and its rows: ensembles, conditions, vs mean, multi-head vs deep"
        );
    }
}

#[test]
fn bad_settings_are_named() {
    // A λ outside [0, 1] is refused as the settings are read.
    let mut json = serde_json::to_value(small(RmArch::PerPrompt)).unwrap();
    json["lambdas"] = serde_json::json!([0.4, 1.5]);
    let err = serde_json::from_value::<ToyConfig>(json)
        .unwrap_err()
        .to_string();
    assert!(err.contains("λ must be in [0, 1]"), "{err}");
    let mut cfg = small(RmArch::PerPrompt);
    cfg.pairs_per_prompt = 8;
    assert!(
        rrlhf_toy::run(&cfg, |_| {})
            .unwrap_err()
            .to_string()
            .contains("pairs_per_prompt")
    );
}

#[test]
fn multi_head_heads_share_a_trunk_and_learn_apart() {
    let pairs = preferences(2, 7);
    for arch in [RmArch::PerPrompt, RmArch::Joint] {
        let rm = RewardModel::with_heads(arch, 16, 4, 3);
        assert_eq!(rm.heads(), 4);
        assert_eq!(rm.tables().size(), [4, 8, 8]);
        assert_eq!(rm.table().size(), [8, 8]);
        rm.train(&pairs, 60, 1e-2).unwrap();
        let t = rm.tables();
        let heads: Vec<Vec<Vec<f32>>> = (0..4).map(|h| rows(&t.get(h))).collect();
        assert_eq!(rows(&rm.table()), heads[0], "table() is head 0");
        for h in 1..4 {
            assert_ne!(heads[h], heads[0], "{arch:?}: head {h} equals head 0");
        }
        // Trained on every pair, each head ranks the chosen response above the rejected one on
        // (nearly) every pair; the joint RM fits less (it learns per-response biases first).
        let fit = |h: &Vec<Vec<f32>>| pairs.iter().filter(|p| h[p.0][p.1] > h[p.0][p.2]).count();
        let need = match arch {
            RmArch::PerPrompt => pairs.len() - 1,
            RmArch::Joint => pairs.len() / 2,
        };
        for h in &heads {
            assert!(fit(h) >= need, "{arch:?}: {} of {}", fit(h), pairs.len());
        }
    }
    // One head is the single RM: the same weights and the same training.
    let (one, plain) = (
        RewardModel::with_heads(RmArch::PerPrompt, 16, 1, 5),
        RewardModel::new(RmArch::PerPrompt, 16, 5),
    );
    one.train(&pairs, 20, 1e-2).unwrap();
    plain.train(&pairs, 20, 1e-2).unwrap();
    assert_eq!(rows(&one.table()), rows(&plain.table()));
}

#[test]
fn partitioned_heads_and_no_multi_head_run() {
    let mut cfg = small(RmArch::PerPrompt);
    cfg.seeds = 2;
    cfg.multi_head = HeadData::Partition;
    cfg.uwo_cs = vec![1.0];
    let r = rrlhf_toy::run(&cfg, |_| {}).unwrap();
    assert_eq!(r.conditions.len(), 5 + 4);
    assert!(r.conditions.iter().any(|c| c.name == "multi-head UWO c=1"));
    cfg.multi_head = HeadData::Off;
    let r = rrlhf_toy::run(&cfg, |_| {}).unwrap();
    assert_eq!(r.conditions.len(), 5);
    assert!(r.multi_vs_deep.is_empty() && r.ensembles.len() == 1);
    let dir = tempfile::tempdir().unwrap();
    rrlhf_toy::report::write(dir.path(), &r).unwrap();
    assert!(!dir.path().join("toy-heads.png").exists());
}

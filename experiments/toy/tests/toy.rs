//! A reduced toy run (few seeds, short training): the outputs' shape and invariants — never the
//! experiment's conclusions.

use rrlhf_robust::Lambda;
use rrlhf_toy::bandit::PpoSettings;
use rrlhf_toy::experiment::ToyConfig;
use rrlhf_toy::reward::RmArch;

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
                "robust λ=0.4",
                "robust λ=0",
                "mean of RMs"
            ]
        );
        assert_eq!(
            r.seeds.iter().map(|s| s.seed).collect::<Vec<_>>(),
            vec![11, 12, 13]
        );
        for s in &r.seeds {
            assert_eq!(s.rm_correct.len(), 4, "nominal + 3 extra RMs");
            assert_eq!(s.outcomes.len(), 4);
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
        for f in ["toy.json", "toy.md", "toy-rms.png", "toy-actors.png"] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        let md = std::fs::read_to_string(dir.path().join("toy.md")).unwrap();
        assert_eq!(
            md.matches("\n| ").count(),
            1 + 4,
            "header + one row per condition"
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

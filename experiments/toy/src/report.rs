//! The toy's outputs: `toy.json`, `toy.md` (a table per condition with seed spread and the
//! paired comparison against standard RLHF) and heatmaps of the first seed like the paper's
//! Fig. 1 (`toy-rms.png`: each RM and the aggregated rewards; `toy-actors.png`: final policies).

use std::fmt::Write as _;
use std::path::Path;

use rrlhf_plot::{Panel, heatmaps};

use crate::N;
use crate::experiment::ToyResult;

pub fn markdown(r: &ToyResult) -> String {
    let c = &r.config;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{} seeds; RM `{:?}`, {} rejected per prompt, {} extra RMs, {} BT steps{}; PPO {} iterations × {} samples/prompt, β = {}.\n",
        c.seeds,
        c.rm_arch,
        c.pairs_per_prompt,
        c.extra_rms,
        c.rm_steps,
        if c.standardize {
            ", RMs standardised"
        } else {
            ""
        },
        c.ppo.iterations,
        c.ppo.samples_per_prompt,
        c.ppo.beta
    );
    let _ = writeln!(
        md,
        "Nominal RM diagonal accuracy: {:.1}% of prompts.\n",
        r.rm_diagonal_accuracy * 100.0
    );
    let _ = writeln!(
        md,
        "| condition | prompts right (of 8), mean ± s.e. | all 8 right | reward table right | vs standard: wins / losses / ties | sign test p |\n|---|---|---|---|---|---|"
    );
    for s in &r.conditions {
        let _ = writeln!(
            md,
            "| {} | {:.2} ± {:.2} | {:.0}% | {:.2} | {} / {} / {} | {:.3} |",
            s.name,
            s.correct_mean,
            s.correct_se,
            s.all_correct * 100.0,
            s.reward_correct_mean,
            s.wins,
            s.losses,
            s.ties,
            s.sign_test_p
        );
    }
    md
}

pub fn write(dir: &Path, r: &ToyResult) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("toy.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(dir.join("toy.md"), markdown(r))?;
    let Some(t) = r.seeds.first().and_then(|s| s.tables.as_ref()) else {
        return Ok(());
    };
    let to64 = |m: &Vec<Vec<f32>>| -> Vec<Vec<f64>> {
        m.iter()
            .map(|row| row.iter().map(|&v| v as f64).collect())
            .collect()
    };
    let diag: Vec<Option<usize>> = (0..N).map(Some).collect();
    let rm_tables: Vec<Vec<Vec<f64>>> = t.rms.iter().map(to64).collect();
    let rm_titles: Vec<String> = (0..rm_tables.len())
        .map(|k| {
            if k == 0 {
                "nominal RM".to_owned()
            } else {
                format!("RM seed {k}")
            }
        })
        .collect();
    let names: Vec<String> = r.config.conditions().into_iter().map(|(n, _)| n).collect();
    let reward_tables: Vec<Vec<Vec<f64>>> = t.rewards.iter().map(to64).collect();
    let mut panels: Vec<Panel> = rm_tables
        .iter()
        .zip(&rm_titles)
        .map(|(v, title)| Panel {
            title,
            x_label: "response",
            y_label: "prompt",
            values: v,
            marked: &diag,
        })
        .collect();
    let robust = names
        .iter()
        .position(|n| n.contains("0.4"))
        .unwrap_or(names.len() - 1);
    let robust_title = format!("aggregated: {}", names[robust]);
    panels.push(Panel {
        title: &robust_title,
        x_label: "response",
        y_label: "prompt",
        values: &reward_tables[robust],
        marked: &diag,
    });
    heatmaps(
        &dir.join("toy-rms.png"),
        &format!("Reward models, seed {}", r.seeds[0].seed),
        &panels,
    )?;
    let policy_tables: Vec<Vec<Vec<f64>>> = t.policies.iter().map(to64).collect();
    let panels: Vec<Panel> = policy_tables
        .iter()
        .zip(&names)
        .map(|(v, title)| Panel {
            title,
            x_label: "response",
            y_label: "prompt",
            values: v,
            marked: &diag,
        })
        .collect();
    heatmaps(
        &dir.join("toy-actors.png"),
        &format!(
            "Final policies π(response | prompt), seed {}",
            r.seeds[0].seed
        ),
        &panels,
    )?;
    Ok(())
}

//! The toy's outputs: `toy.json`, `toy.md` (the ensembles' accuracy and disagreement, a row per
//! condition with seed spread and the paired comparison against standard RLHF, then each robust
//! or UWO condition against its ensemble's mean and each multi-head condition against its
//! deep-ensemble twin) and heatmaps of the first seed like the paper's Fig. 1 (`toy-rms.png`:
//! each RM and the aggregated rewards; `toy-heads.png`: the multi-head RM's heads, when it runs;
//! `toy-actors.png`: final policies).

use std::fmt::Write as _;
use std::path::Path;

use rrlhf_plot::{Panel, heatmaps};

use crate::N;
use crate::experiment::{Contrast, ToyResult};
use crate::reward::HeadData;

pub fn markdown(r: &ToyResult) -> String {
    let c = &r.config;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{} seeds; RM `{:?}`, {} rejected per prompt, {} extra RMs, {} BT steps{}; multi-head RM: {}; UWO c ∈ {:?}; PPO {} iterations × {} samples/prompt, β = {}.\n",
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
        match c.multi_head {
            HeadData::Off => "off",
            HeadData::All => "every head on every pair",
            HeadData::Partition => "each head on its own partition",
        },
        c.uwo_cs,
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
        "| ensemble | nominal member right | members right (mean) | variance across members: pair-covered cells | uncovered cells |\n|---|---|---|---|---|"
    );
    for e in &r.ensembles {
        let _ = writeln!(
            md,
            "| {} | {:.1}% | {:.1}% | {:.3} | {:.3} |",
            e.ensemble.label(),
            e.nominal_accuracy * 100.0,
            e.member_accuracy * 100.0,
            e.var_covered,
            e.var_uncovered
        );
    }
    md.push('\n');
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
    contrasts(
        &mut md,
        "Pessimism vs averaging: each condition against its ensemble's mean",
        &r.vs_mean,
    );
    contrasts(
        &mut md,
        "Shared trunk vs independent RMs: each multi-head condition against the deep ensemble's",
        &r.multi_vs_deep,
    );
    md
}

fn contrasts(md: &mut String, title: &str, cs: &[Contrast]) {
    if cs.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n{title}, seed by seed:\n\n| condition | against | wins / losses / ties | sign test p |\n|---|---|---|---|"
    );
    for c in cs {
        let _ = writeln!(
            md,
            "| {} | {} | {} / {} / {} | {:.3} |",
            c.a, c.b, c.wins, c.losses, c.ties, c.sign_test_p
        );
    }
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
    let names: Vec<String> = r.config.conditions().into_iter().map(|c| c.name).collect();
    let reward_tables: Vec<Vec<Vec<f64>>> = t.rewards.iter().map(to64).collect();
    let mut panels = table_panels(&rm_tables, &rm_titles, &diag);
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
    if !t.heads.is_empty() {
        let head_tables: Vec<Vec<Vec<f64>>> = t.heads.iter().map(to64).collect();
        let titles: Vec<String> = (0..head_tables.len())
            .map(|k| format!("multi-head head {k}"))
            .collect();
        let mut panels = table_panels(&head_tables, &titles, &diag);
        let mh = names
            .iter()
            .position(|n| n.starts_with("multi-head λ="))
            .or_else(|| names.iter().position(|n| n == "multi-head mean"));
        let mh_title = mh.map(|i| format!("aggregated: {}", names[i]));
        if let (Some(i), Some(title)) = (mh, &mh_title) {
            panels.push(Panel {
                title,
                x_label: "response",
                y_label: "prompt",
                values: &reward_tables[i],
                marked: &diag,
            });
        }
        heatmaps(
            &dir.join("toy-heads.png"),
            &format!("Multi-head RM (shared trunk), seed {}", r.seeds[0].seed),
            &panels,
        )?;
    }
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

/// One heatmap panel per (table, title), the diagonal marked.
fn table_panels<'a>(
    tables: &'a [Vec<Vec<f64>>],
    titles: &'a [String],
    diag: &'a [Option<usize>],
) -> Vec<Panel<'a>> {
    tables
        .iter()
        .zip(titles)
        .map(|(v, title)| Panel {
            title,
            x_label: "response",
            y_label: "prompt",
            values: v,
            marked: diag,
        })
        .collect()
}

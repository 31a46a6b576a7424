//! The end of `rrlhf run`'s summary: standard and reward-robust PPO side by side on the signals
//! a user has without a gold reward — the proxy (nominal head), the worst head, how much the
//! heads disagree, how far the policy moved (KL to the SFT model), response length — and the
//! two policies' replies to the same prompts, scored by the same BRME.

use rrlhf_model::scoring::Scored;
use rrlhf_orchestrator::metrics::StepMetrics;
use rrlhf_robust::Strategy;

/// The first → last step of each run, one row per signal.
pub fn print_ppo(
    standard: Option<(&StepMetrics, &StepMetrics)>,
    robust: (&StepMetrics, &StepMetrics),
    batch: usize,
) {
    let (r0, r1) = robust;
    println!(
        "ppo          {} steps of {} samples, first → last step",
        r1.step, batch
    );
    let robust_name = r1.strategy.to_string();
    let header = match standard {
        Some(_) => format!(
            "             {:<26} {:<24} {}",
            "", "standard (nominal)", robust_name
        ),
        None => format!("             {:<26} {}", "", robust_name),
    };
    println!("{header}");
    type Signal = (&'static str, fn(&StepMetrics) -> f64);
    let signals: [Signal; 6] = [
        ("proxy reward (nominal)", |m| m.rewards.nominal as f64),
        ("worst head (min)", |m| m.rewards.min as f64),
        ("trained-on reward", |m| m.rewards.aggregated as f64),
        ("head disagreement (std)", |m| {
            m.rewards.head_disagreement as f64
        }),
        ("KL to the SFT policy", |m| m.kl as f64),
        ("response length (tokens)", |m| m.response_length as f64),
    ];
    let span = |(a, b): (&StepMetrics, &StepMetrics), f: fn(&StepMetrics) -> f64| {
        format!("{:+.3} → {:+.3}", f(a), f(b))
    };
    for (name, f) in signals {
        match standard {
            Some(s) => println!(
                "             {name:<26} {:<24} {}",
                span(s, f),
                span((r0, r1), f)
            ),
            None => println!("             {name:<26} {}", span((r0, r1), f)),
        }
    }
}

/// Each prompt with the robust policy's reply and, when there is one, the standard policy's.
pub fn print_replies(
    replies: &[(String, String)],
    scored: &[Scored],
    standard: &[(String, String)],
    standard_scored: &[Scored],
    strategy: Strategy,
) {
    for (i, ((p, r), s)) in replies.iter().zip(scored).enumerate() {
        let last_turn = p.rsplit("Human:").next().unwrap_or(p).trim();
        let question = last_turn.trim_end_matches("Assistant:").trim();
        println!("\nHuman: {question}");
        let line = |who: &str, reply: &str, s: &Scored| {
            let sum = s.aggregated.summary;
            println!("  {who}:{reply}");
            println!(
                "    reward: nominal {:+.3} (head {}), min {:+.3}, {strategy} → {:+.3}",
                sum.nominal, sum.nominal_head, sum.min, s.aggregated.reward
            );
        };
        if let (Some((_, sr)), Some(ss)) = (standard.get(i), standard_scored.get(i)) {
            line("standard", sr, ss);
        }
        line("robust  ", r, s);
    }
}

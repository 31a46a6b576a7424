//! Trained services that restart: an actor or critic that comes back at the same address has
//! its start weights, not the run's. The run must notice (the instance id in `Info` changed),
//! load its latest checkpoint into it and take the lost steps again — ending where an
//! undisturbed run ends, with every step once in `metrics.jsonl`. Before restart detection the
//! run went on training the start weights without a word. The other way round, a new run on
//! services that an earlier run trained must start from their start weights.

use std::time::Duration;

use rrlhf_embedded::{Cluster, Options};
use rrlhf_orchestrator::metrics::StepMetrics;
use rrlhf_orchestrator::run::{Control, RunOptions, RunStatus, spawn_run};

use rrlhf_testkit::cluster::{config, dirs, metrics_of, run_to_the_end, wait_for};

const STEPS: usize = 4;

fn options() -> Options {
    Options {
        shutdown_grace_secs: 0.2,
        ..Options::default()
    }
}

fn assert_same_run(whole: &[StepMetrics], disturbed: &[StepMetrics]) {
    let steps: Vec<usize> = disturbed.iter().map(|m| m.step).collect();
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>(), "every step once");
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-4 * (1.0 + x.abs());
    for (a, b) in whole.iter().zip(disturbed) {
        assert!(
            close(a.train.actor_checksum, b.train.actor_checksum),
            "step {}: actor weights continue the run's\n{a:?}\n{b:?}",
            a.step
        );
        assert!(
            close(a.train.critic_checksum, b.train.critic_checksum),
            "step {}: critic weights continue the run's\n{a:?}\n{b:?}",
            a.step
        );
        assert!(close(
            a.rewards.aggregated as f64,
            b.rewards.aggregated as f64
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_actor_or_critic_gets_the_latest_checkpoint_back() {
    let out = tempfile::tempdir().unwrap();
    let c = Cluster::start(&dirs(), &options()).await.unwrap();
    run_to_the_end(config(&c, out.path(), "whole", STEPS)).await;
    c.stop().await;
    let whole = metrics_of(out.path(), "whole");

    // The actor restarts while the run is paused between steps (after step 1 or 2, whichever
    // the pause lands on: the step-0 and step-2 checkpoints cover both).
    let c = Cluster::start(&dirs(), &options()).await.unwrap();
    let run = spawn_run(
        config(&c, out.path(), "actor", STEPS),
        RunOptions::default(),
    )
    .unwrap();
    wait_for("step 1", || run.info().step >= 1).await;
    run.request(Control::Pause).await.unwrap();
    let c = c.restart_actor(Duration::ZERO).await.unwrap();
    run.request(Control::Resume).await.unwrap();
    assert_eq!(
        run.finished().await,
        RunStatus::Finished,
        "{:?}",
        run.info().error
    );
    assert_same_run(&whole, &metrics_of(out.path(), "actor"));
    c.stop().await;

    // The critic is killed in the middle of whatever the run is doing and comes back later.
    let c = Cluster::start(&dirs(), &options()).await.unwrap();
    let run = spawn_run(
        config(&c, out.path(), "critic", STEPS),
        RunOptions::default(),
    )
    .unwrap();
    wait_for("step 1", || run.info().step >= 1).await;
    let c = c.restart_critic(Duration::from_millis(300)).await.unwrap();
    assert_eq!(
        run.finished().await,
        RunStatus::Finished,
        "{:?}",
        run.info().error
    );
    assert_same_run(&whole, &metrics_of(out.path(), "critic"));
    c.stop().await;
}

/// Two runs one after the other on the same services: the second starts from the services'
/// start weights and optimizer state, not from where the first left them, so it repeats the
/// first step for step. Before, it went on training the first run's policy without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_run_on_trained_services_starts_from_their_start_weights() {
    let out = tempfile::tempdir().unwrap();
    let c = Cluster::start(&dirs(), &options()).await.unwrap();
    run_to_the_end(config(&c, out.path(), "first", STEPS)).await;
    run_to_the_end(config(&c, out.path(), "second", STEPS)).await;
    c.stop().await;
    assert_same_run(
        &metrics_of(out.path(), "first"),
        &metrics_of(out.path(), "second"),
    );
}

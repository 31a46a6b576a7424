//! Faults and resume: a reward service that goes away and comes back costs no step; a run
//! resumed from its checkpoint on fresh services continues as if never interrupted.

use rrlhf_embedded::{Cluster, Options, reward_config, start_reward};
use rrlhf_orchestrator::checkpoint;
use rrlhf_orchestrator::run::{Control, RunOptions, RunStatus, spawn_run};
use rrlhf_ppo::KlController;

use rrlhf_testkit::cluster::{
    cluster, config, dirs, metrics_of, resume_to_the_end, run_to_the_end, wait_for,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_reward_service_costs_no_step() {
    let out = tempfile::tempdir().unwrap();
    let opts = Options {
        shutdown_grace_secs: 0.2,
        ..Options::default()
    };
    let cluster = Cluster::start(&dirs(), &opts).await.unwrap();
    let cfg = config(&cluster, out.path(), "fault", 4);
    let run = spawn_run(cfg, RunOptions::default()).unwrap();
    wait_for("step 1", || run.info().step >= 1).await;

    // Stop the reward service mid-run, keep it down a while, restart it on the same port.
    let Cluster {
        actor,
        critic,
        reference,
        reward,
        ..
    } = cluster;
    let addr = reward.addr;
    // Paused between steps while the service goes down, so the outage falls inside a step.
    run.request(Control::Pause).await.unwrap();
    reward.stop().await;
    run.request(Control::Resume).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let info = run.info();
    assert_eq!(info.status, RunStatus::Running, "{:?}", info.error);
    assert!(info.step < 4, "the run is waiting for the reward service");
    let reward = start_reward(reward_config(&dirs().reward, &addr.to_string(), &opts))
        .await
        .unwrap();

    assert_eq!(
        run.finished().await,
        RunStatus::Finished,
        "{:?}",
        run.info().error
    );
    let steps: Vec<usize> = metrics_of(out.path(), "fault")
        .iter()
        .map(|m| m.step)
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4], "every step exactly once");
    for s in [actor, critic, reward].into_iter().chain(reference) {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_continues_exactly_where_the_checkpoint_left_off() {
    let out = tempfile::tempdir().unwrap();
    let adaptive = KlController::Adaptive {
        beta: 0.1,
        target: 0.5,
        horizon: 64.0,
    };

    // The uninterrupted run: 3 steps.
    let c1 = cluster().await;
    let mut cfg = config(&c1, out.path(), "whole", 3);
    cfg.ppo.kl = adaptive;
    run_to_the_end(cfg).await;
    c1.stop().await;
    let whole = metrics_of(out.path(), "whole");

    // The interrupted one: its process dies after the step-2 checkpoint (the run ends there),
    // then a new orchestrator on freshly started services resumes it.
    let c2 = cluster().await;
    let mut cfg = config(&c2, out.path(), "cut", 2);
    cfg.ppo.kl = adaptive;
    run_to_the_end(cfg.clone()).await;
    c2.stop().await;
    let (_, state) = checkpoint::latest(&out.path().join("cut"))
        .unwrap()
        .unwrap();
    assert_eq!(state.step, 2);
    assert_eq!(state.cursor.index, 16, "two batches of 8 prompts consumed");
    assert_ne!(state.kl.beta(), 0.1, "the adaptive controller moved");

    let c3 = cluster().await;
    cfg.endpoints = c3.endpoints(None);
    cfg.run.steps = 3;
    resume_to_the_end(cfg).await;
    c3.stop().await;
    let cut = metrics_of(out.path(), "cut");
    assert_eq!(
        cut.iter().map(|m| m.step).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let (a, b) = (&whole[2], &cut[2]);
    assert_eq!(a.beta, b.beta, "KL controller state restored");
    let close = |x: f32, y: f32| (x - y).abs() <= 1e-4 * (1.0 + x.abs());
    assert!(
        close(a.rewards.aggregated, b.rewards.aggregated),
        "{a:?}\n{b:?}"
    );
    assert!(close(a.kl, b.kl), "{a:?}\n{b:?}");
    assert!(close(a.response_length, b.response_length));
    assert!(
        close(a.train.policy_loss, b.train.policy_loss),
        "{a:?}\n{b:?}"
    );
    assert!(
        close(a.train.value_loss, b.train.value_loss),
        "{a:?}\n{b:?}"
    );
}

/// Every call carries its kind's deadline: a critic `Values` deadline too short for any answer
/// ends the call with DEADLINE_EXCEEDED, retried until `give_up_secs`, and the run fails naming
/// the call (before deadlines, the orchestrator waited for as long as the service took).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_is_given_up() {
    let out = tempfile::tempdir().unwrap();
    let cluster = cluster().await;
    let mut cfg = config(&cluster, out.path(), "deadline", 1);
    cfg.retry.deadlines.values_secs = 1e-6;
    cfg.retry.give_up_secs = 1;
    let run = spawn_run(cfg, RunOptions::default()).unwrap();
    assert_eq!(run.finished().await, RunStatus::Failed);
    let error = run.info().error.unwrap_or_default();
    let lower = error.to_lowercase();
    assert!(
        error.contains("critic Values")
            && (lower.contains("deadline") || lower.contains("timeout")),
        "{error}"
    );
    cluster.stop().await;
}

/// A copy of the reward model at `src` in `dst` whose variables named by `pick` are filled
/// with `value` (a broken or absurdly scaled model, as a user might deploy by mistake).
fn altered_reward_model(
    src: &std::path::Path,
    dst: std::path::PathBuf,
    pick: impl Fn(&str) -> bool,
    value: f64,
) -> std::path::PathBuf {
    use rrlhf_model::reward_model::RewardModel;
    use rrlhf_model::{Placement, TextTokenizer};

    let rm = RewardModel::from_dir(src, Placement::default()).unwrap();
    tch::no_grad(|| {
        for (name, mut v) in rm.vs.variables() {
            if pick(&name) {
                let _ = v.fill_(value);
            }
        }
    });
    rm.save(&dst).unwrap();
    TextTokenizer::load(src).unwrap().save_to(&dst).unwrap();
    dst
}

/// Starts `models` and a resumable run `id` of `steps` steps under `out`; returns once it
/// has left `running` (paused, or ended), with its cluster.
async fn run_until_it_stops_running(
    models: &rrlhf_embedded::ModelDirs,
    out: &std::path::Path,
    id: &str,
    steps: usize,
) -> (Cluster, rrlhf_orchestrator::RunHandle) {
    let cluster = Cluster::start(models, &Options::default()).await.unwrap();
    let cfg = config(&cluster, out, id, steps);
    let options = RunOptions {
        pause_on_bad_batch: true,
        ..RunOptions::default()
    };
    let run = spawn_run(cfg, options).unwrap();
    wait_for("the pause", || {
        !matches!(run.info().status, RunStatus::Created | RunStatus::Running)
    })
    .await;
    (cluster, run)
}

/// A reward model that answers NaN: the step is refused before anything trains, rolled back,
/// and the run pauses with the reason instead of failing (which ended `rrlhf run` and its REST
/// API); the paused run still takes commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_finite_batch_pauses_the_run_instead_of_failing_it() {
    let out = tempfile::tempdir().unwrap();
    // A copy of the test kit's BRME whose heads answer NaN.
    let broken = altered_reward_model(
        &dirs().reward,
        out.path().join("broken-brme"),
        |name| name.starts_with("brme.mu"),
        f64::NAN,
    );
    let models = rrlhf_embedded::ModelDirs {
        reward: broken,
        ..dirs()
    };
    let (cluster, run) = run_until_it_stops_running(&models, out.path(), "nan", 2).await;
    let info = run.info();
    assert_eq!(info.status, RunStatus::Paused, "{:?}", info.error);
    assert_eq!(info.step, 0, "the step was rolled back");
    let error = info.error.unwrap_or_default();
    assert!(
        error.starts_with("step 1:") && error.contains("corrupt") && error.contains("NaN"),
        "{error}"
    );
    assert!(
        !out.path().join("nan/metrics.jsonl").exists() || metrics_of(out.path(), "nan").is_empty()
    );
    run.request(Control::Stop).await.unwrap();
    assert_eq!(run.finished().await, RunStatus::Stopped);
    cluster.stop().await;
}

/// Training that turns the weights non-finite is caught after the step: here a critic whose
/// value head is scaled by 1e36 — its values are finite, so the batch passes, but the value
/// loss and its gradients overflow into NaN. The actor and critic get the latest checkpoint
/// back, the run rolls back to it and pauses with the reason (before, the NaN weights stayed:
/// the next step's values were NaN and the run failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_that_diverges_rolls_back_to_the_checkpoint_and_pauses() {
    let out = tempfile::tempdir().unwrap();
    let scaled = altered_reward_model(
        &dirs().critic,
        out.path().join("scaled-critic"),
        |name| name == "score.weight",
        1e36,
    );
    let models = rrlhf_embedded::ModelDirs {
        critic: scaled,
        ..dirs()
    };
    let (cluster, run) = run_until_it_stops_running(&models, out.path(), "diverge", 4).await;
    let info = run.info();
    assert_eq!(info.status, RunStatus::Paused, "{:?}", info.error);
    let error = info.error.unwrap_or_default();
    assert!(
        error.starts_with("step 1: training turned non-finite (")
            && error.contains("critic weights NaN"),
        "{error}"
    );
    let (_, saved) = checkpoint::latest(&out.path().join("diverge"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (info.step, saved.step),
        (0, 0),
        "back at the step-0 checkpoint"
    );
    assert!(
        metrics_of(out.path(), "diverge").is_empty(),
        "no step recorded"
    );
    run.request(Control::Stop).await.unwrap();
    assert_eq!(run.finished().await, RunStatus::Stopped);
    cluster.stop().await;
}

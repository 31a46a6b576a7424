//! Chaos: the four services and the orchestrator run as separate `rrlhf` processes, and a
//! seeded schedule kills each of the five (SIGKILL, no goodbye) at a random point of a short
//! PPO run, keeps it down a moment, and starts it again at the same address. The run must end
//! as an undisturbed run of the same configuration ends:
//! - every step exactly once in `metrics.jsonl`;
//! - every checkpoint complete and loadable (`state.json`, the actor as a causal LM, the critic
//!   as a reward model);
//! - at every step the actor's and critic's weight checksums equal the undisturbed run's
//!   (weights continue across the restarts: a restarted actor or critic gets the latest
//!   checkpoint back, a restarted orchestrator resumes the run it was driving from its latest
//!   checkpoint, a restarted reward or reference service costs only retries).
//!
//! The schedule allows exact equality everywhere: what a kill loses is retaken from a
//! checkpoint with the same seeds, and the services' numbers do not depend on timing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rrlhf_model::reward_model::RewardModel;
use rrlhf_model::{CausalLm, Placement};
use rrlhf_orchestrator::checkpoint::RunState;
use rrlhf_orchestrator::metrics::{StepMetrics, read_all};
use rrlhf_testkit::fuzz::Fuzz;
use rrlhf_testkit::models::models;

use crate::fixture::rrlhf;

const STEPS: usize = 12;

/// One `rrlhf` process that can be killed and started again with the same arguments.
struct Proc {
    name: &'static str,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn new(name: &'static str, args: Vec<String>, logs: &Path) -> Self {
        Self {
            name,
            args,
            log: logs.join(format!("{name}.log")),
            child: None,
        }
    }

    fn start(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = rrlhf()
            .args(&self.args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The four services on fresh ports, started; their endpoints as orchestrator TOML.
fn services(logs: &Path) -> (Vec<Proc>, String) {
    let m = models();
    let roles = [
        ("actor", &m.policy),
        ("critic", &m.stage1),
        ("reference", &m.policy),
        ("reward", &m.brme),
    ];
    let mut procs = Vec::new();
    let mut endpoints = String::from("[endpoints]\n");
    for (role, model) in roles {
        let port = free_port();
        let args = [
            "serve",
            role,
            "--model",
            &model.display().to_string(),
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--max-length",
            "64",
        ]
        .map(String::from)
        .to_vec();
        let mut p = Proc::new(role, args, logs);
        p.start();
        procs.push(p);
        endpoints.push_str(&format!("{role} = [\"http://127.0.0.1:{port}\"]\n"));
    }
    (procs, endpoints)
}

/// The orchestrator of run `id` under `out`, with a REST address (so that a restart lists and
/// resumes the run it finds interrupted).
fn orchestrator(dir: &Path, logs: &Path, endpoints: &str, id: &str) -> Proc {
    let config = dir.join(format!("{id}.toml"));
    let toml = format!(
        "{endpoints}
[run]
id = \"{id}\"
out_dir = \"{out}\"
steps = {STEPS}
batch_size = 8
seed = 3
checkpoint_every = 2
keep_checkpoints = 100

[sampling]
max_new_tokens = 6

[ppo.actor]
lr = 1e-3
minibatch_size = 4

[ppo.critic]
lr = 1e-3
minibatch_size = 4

[retry]
initial_ms = 20
max_ms = 300
give_up_secs = 120

[rest]
addr = \"127.0.0.1:{port}\"
",
        out = dir.join("runs").display(),
        port = free_port(),
    );
    std::fs::write(&config, toml).unwrap();
    let args = ["orchestrate", "--config", &config.display().to_string()].map(String::from);
    Proc::new("orchestrator", args.to_vec(), logs)
}

fn steps_done(metrics: &Path) -> usize {
    std::fs::read_to_string(metrics).map_or(0, |t| t.lines().count())
}

/// Waits for the orchestrator to exit (restarting it if `schedule` asks), with a deadline.
fn wait_for_exit(orch: &mut Proc, logs: &Path) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let child = orch.child.as_mut().expect("the orchestrator runs");
        if let Some(status) = child.try_wait().unwrap() {
            orch.child = None;
            assert!(
                status.success(),
                "the orchestrator failed:\n{}",
                tails(logs)
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not end:\n{}",
            tails(logs)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of every process's log, for a failure message.
fn tails(logs: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(logs).unwrap().filter_map(|e| e.ok()) {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        out.push_str(&format!("--- {}\n{tail}\n", entry.path().display()));
    }
    out
}

/// Every checkpoint of the run is complete and loads.
fn assert_checkpoints_load(run: &Path) {
    let root = run.join("checkpoints");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).unwrap().filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("step-") {
            continue;
        }
        let dir = entry.path();
        let state: RunState =
            serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap())
                .unwrap_or_else(|e| panic!("{name}/state.json: {e}"));
        assert_eq!(format!("step-{:06}", state.step), name);
        CausalLm::from_dir(&dir.join("actor"), Placement::default())
            .unwrap_or_else(|e| panic!("{name}/actor: {e}"));
        RewardModel::from_dir(&dir.join("critic"), Placement::default())
            .unwrap_or_else(|e| panic!("{name}/critic: {e}"));
        seen += 1;
    }
    assert_eq!(seen, STEPS / 2 + 1, "checkpoints at steps 0, 2, …, {STEPS}");
}

fn metrics_of(dir: &Path, id: &str) -> Vec<StepMetrics> {
    read_all(&dir.join("runs").join(id).join("metrics.jsonl")).unwrap()
}

#[test]
fn a_run_survives_every_process_being_killed_and_ends_as_an_undisturbed_one() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();

    // The undisturbed run.
    let logs = dir.path().join("logs-calm");
    std::fs::create_dir_all(&logs).unwrap();
    let (calm_services, endpoints) = services(&logs);
    let mut orch = orchestrator(dir.path(), &logs, &endpoints, "calm");
    orch.start();
    wait_for_exit(&mut orch, &logs);
    drop(calm_services);
    let calm = metrics_of(dir.path(), "calm");
    assert_eq!(calm.len(), STEPS);

    // The same run while a seeded schedule kills each process once, in a random order, at a
    // random moment after a random number of steps.
    let logs = dir.path().join("logs-chaos");
    std::fs::create_dir_all(&logs).unwrap();
    let (mut procs, endpoints) = services(&logs);
    let mut orch = orchestrator(dir.path(), &logs, &endpoints, "chaos");
    orch.start();
    let metrics = dir.path().join("runs/chaos/metrics.jsonl");
    let mut fuzz = Fuzz::new(2026);
    let mut victims: Vec<usize> = (0..=procs.len()).collect();
    for i in (1..victims.len()).rev() {
        victims.swap(i, fuzz.below(i as u64 + 1) as usize);
    }
    let mut schedule = Vec::new();
    for (k, &victim) in victims.iter().enumerate() {
        let after = 1 + 2 * k;
        let wait = Instant::now() + Duration::from_secs(300);
        while steps_done(&metrics) < after {
            assert!(
                Instant::now() < wait,
                "stuck before kill {k}:\n{}",
                tails(&logs)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(fuzz.below(300)));
        let down = Duration::from_millis(100 + fuzz.below(500));
        let p = if victim == procs.len() {
            &mut orch
        } else {
            &mut procs[victim]
        };
        schedule.push(format!(
            "{} at {} steps, down {down:?}",
            p.name,
            steps_done(&metrics)
        ));
        p.kill();
        std::thread::sleep(down);
        p.start();
    }
    wait_for_exit(&mut orch, &logs);
    let chaos = metrics_of(dir.path(), "chaos");
    eprintln!("schedule: {schedule:?}");
    // The kills hit what they were meant to: a restarted orchestrator took the interrupted
    // run over, and the run noticed a restarted actor or critic and gave it the checkpoint.
    let log = std::fs::read_to_string(logs.join("orchestrator.log")).unwrap();
    assert!(
        log.contains("resumed interrupted run chaos"),
        "{}",
        tails(&logs)
    );
    assert!(
        log.contains("reloading the latest checkpoint"),
        "{}",
        tails(&logs)
    );

    let steps: Vec<usize> = chaos.iter().map(|m| m.step).collect();
    assert_eq!(
        steps,
        (1..=STEPS).collect::<Vec<_>>(),
        "every step once ({schedule:?})"
    );
    assert_checkpoints_load(&dir.path().join("runs/chaos"));
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-4 * (1.0 + x.abs());
    for (a, b) in calm.iter().zip(&chaos) {
        assert!(
            close(a.train.actor_checksum, b.train.actor_checksum)
                && close(a.train.critic_checksum, b.train.critic_checksum),
            "step {}: the weights left the undisturbed run's path ({schedule:?})\n{a:?}\n{b:?}\n{}",
            a.step,
            tails(&logs)
        );
    }
}

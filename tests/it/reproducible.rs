//! With `merge_requests = false` every service runs each request as its own batch, so a PPO run
//! through the services reproduces bit for bit: two runs from the same models and seed give the
//! same rewards, KL and losses at every step. (Merged batches depend on arrival timing, and
//! their shapes change floating-point summation order.)

use rrlhf_embedded::{Cluster, Options};
use rrlhf_testkit::cluster::{config, dirs, metrics_of, run_to_the_end};
use serde_json::Value;

/// One run of 3 steps on a freshly started cluster (the actor and critic start from the same
/// weights each time); its metrics without the timings.
async fn run(out: &std::path::Path, id: &str) -> Vec<Value> {
    let opts = Options {
        merge_requests: false,
        ..Options::default()
    };
    let cluster = Cluster::start(&dirs(), &opts).await.unwrap();
    run_to_the_end(config(&cluster, out, id, 3)).await;
    cluster.stop().await;
    metrics_of(out, id)
        .into_iter()
        .map(|m| {
            let mut v = serde_json::to_value(m).unwrap();
            let timing = |k: &str| k.ends_with("_secs") || k.ends_with("_per_sec");
            v.as_object_mut().unwrap().retain(|k, _| !timing(k));
            v
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmerged_runs_reproduce_bit_for_bit() {
    let out = tempfile::tempdir().unwrap();
    let first = run(out.path(), "first").await;
    let second = run(out.path(), "second").await;
    assert_eq!(first.len(), 3);
    assert_eq!(first, second);
}

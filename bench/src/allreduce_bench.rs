//! `rrlhf-allreduce-bench`: one rank of an all-reduce benchmark through `rrlhf-dist` (Gloo for
//! `--device cpu`, NCCL for `--device cuda:N`). It all-reduces (sum) the gradient list of a
//! Llama-shaped model — packed into c10d calls of at most 64 MiB each, as data-parallel
//! training does every update — and prints, on rank 0, one JSON object with the median seconds
//! per call. `bench/allreduce_peer.py` starts two of these and two
//! `torch.distributed` ranks doing the same, and reports the ratio.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use rrlhf_dist::{Backend, GroupConfig, ProcessGroup, ReduceOp};
use serde_json::json;
use tch::{Kind, Tensor};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    rank: usize,
    #[arg(long, default_value_t = 2)]
    world: usize,
    /// HOST:PORT of the TCPStore (rank 0 hosts it).
    #[arg(long)]
    store: String,
    #[arg(long, default_value_t = 4096)]
    vocab: i64,
    #[arg(long, default_value_t = 256)]
    hidden: i64,
    #[arg(long, default_value_t = 688)]
    ffn: i64,
    #[arg(long, default_value_t = 4)]
    layers: i64,
    #[arg(long, default_value_t = 20)]
    repeats: usize,
    /// Where the gradients live: cpu (a Gloo group) or cuda:N (an NCCL group).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Shapes of a Llama's trainable tensors (same list as the Python peer's `shapes`).
fn shapes(a: &Args) -> Vec<Vec<i64>> {
    let (h, f) = (a.hidden, a.ffn);
    let mut out = vec![vec![a.vocab, h]];
    for _ in 0..a.layers {
        out.extend([
            vec![h, h],
            vec![h, h],
            vec![h, h],
            vec![h, h],
            vec![f, h],
            vec![f, h],
            vec![h, f],
            vec![h],
            vec![h],
        ]);
    }
    out.push(vec![h]);
    out
}

fn main() -> Result<()> {
    let a = Args::parse();
    tch::set_num_threads(1);
    let device = rrlhf_model::device::parse_device(&a.device)?;
    let group = ProcessGroup::new(&GroupConfig {
        backend: Backend::for_device(device),
        store: a.store.clone(),
        rank: a.rank,
        world_size: a.world,
        timeout: Duration::from_secs(120),
    })?;
    let grads: Vec<Tensor> = shapes(&a)
        .iter()
        .map(|s| Tensor::ones(s.as_slice(), (Kind::Float, device)))
        .collect();
    let elements: i64 = grads.iter().map(Tensor::numel).map(|n| n as i64).sum();
    group.all_reduce(&grads, ReduceOp::Sum)?; // warm-up (connections, buffers)
    let mut times = Vec::with_capacity(a.repeats);
    for _ in 0..a.repeats {
        group.barrier()?;
        let t = Instant::now();
        group.all_reduce(&grads, ReduceOp::Sum)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    // Every element was 1 before the first call: after 1 + repeats sums it is world^(1+repeats).
    let expected = (a.world as f64).powi(1 + a.repeats as i32);
    anyhow::ensure!(
        (grads[0].double_value(&[0, 0]) - expected).abs() < 1e-3 * expected,
        "all-reduce produced a wrong sum"
    );
    if a.rank == 0 {
        println!(
            "{}",
            json!({
                "backend": group.backend().name(),
                "world_size": a.world,
                "tensors": grads.len(),
                "elements": elements,
                "median_secs": times[times.len() / 2],
            })
        );
    }
    Ok(())
}

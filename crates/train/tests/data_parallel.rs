//! `run_updates` over a real two-rank Gloo group (two threads of this test, loopback store): the
//! ranks agree on the number of updates, stay identical, and when one rank's loss fails both
//! stop at that update — the failing rank with its own error, the other naming it.

use std::time::Duration;

use rrlhf_dist::{Backend, GroupConfig};
use rrlhf_train::TrainError;
use rrlhf_train::data_parallel::{DataParallel, MinibatchLoss, UpdatePlan, checksum, run_updates};
use rrlhf_train::optim::AdamW;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// A linear model with fixed weights, its optimizer, and the result of `updates` run with
/// `fail_at` (a local update index whose loss fails, if any).
fn train_rank(
    rank: usize,
    store: String,
    samples: usize,
    fail_at: Option<usize>,
) -> (Result<usize, TrainError>, f64) {
    let dp = DataParallel::join(&GroupConfig {
        backend: Backend::Gloo,
        store,
        rank,
        world_size: 2,
        timeout: Duration::from_secs(30),
    })
    .expect("join");
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = nn::linear(vs.root() / "layer", 3, 1, Default::default());
    // Rank 1 starts from other weights: the broadcast must make them rank 0's.
    tch::no_grad(|| {
        for (i, (_, mut v)) in vs.variables().into_iter().enumerate() {
            let fill = if rank == 0 {
                0.1 * (i + 1) as f64
            } else {
                -1.0
            };
            let _ = v.fill_(fill);
        }
    });
    dp.broadcast_parameters(&vs).expect("broadcast");
    let mut opt = AdamW::new(&vs, 0.0).expect("optimizer");
    let plan = UpdatePlan {
        samples,
        minibatch_size: 1,
        epochs: 1,
        seed: 5,
        lr: 0.05,
        max_grad_norm: 0.0,
    };
    let mut calls = 0;
    let result = run_updates(&mut opt, Some(&dp), &plan, |idx| {
        calls += 1;
        if Some(calls - 1) == fail_at {
            return Err(TrainError::Invalid(format!(
                "rank {rank}: cannot build update {calls}"
            )));
        }
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0 + idx[0] as f32]).view([1, 3]);
        let loss = (layer.forward(&x) - 1.0).square().sum(Kind::Float);
        Ok(MinibatchLoss {
            loss,
            tokens: 1.0,
            stats: (),
        })
    })
    .map(|done| done.len());
    (result, checksum(&vs))
}

fn two_ranks(
    samples: [usize; 2],
    fail: [Option<usize>; 2],
) -> Vec<(Result<usize, TrainError>, f64)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let store = format!("127.0.0.1:{port}");
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let store = store.clone();
            std::thread::spawn(move || train_rank(rank, store, samples[rank], fail[rank]))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread"))
        .collect()
}

#[test]
fn ranks_agree_on_updates_and_stay_identical() {
    tch::set_num_threads(1);
    // Rank 0 has 3 samples (3 updates), rank 1 only 1: it joins updates 2 and 3 with zero
    // gradients. Both end with the same weights.
    let out = two_ranks([3, 1], [None, None]);
    assert_eq!(out[0].0.as_ref().ok(), Some(&3));
    assert_eq!(out[1].0.as_ref().ok(), Some(&1));
    assert_eq!(out[0].1, out[1].1, "the ranks hold the same weights");
}

#[test]
fn a_failing_loss_stops_every_rank_at_that_update() {
    tch::set_num_threads(1);
    let out = two_ranks([3, 3], [None, Some(1)]);
    let own = out[1].0.as_ref().unwrap_err().to_string();
    assert!(own.contains("rank 1: cannot build update 2"), "{own}");
    let other = out[0].0.as_ref().unwrap_err().to_string();
    assert!(
        other.contains("another data-parallel rank could not compute its loss in update 2 of 3"),
        "{other}"
    );
    assert_eq!(out[0].1, out[1].1, "both took update 1 and no other");
}

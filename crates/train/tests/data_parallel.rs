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

/// Rank `rank` of a two-rank Gloo group on `store`.
fn join(rank: usize, store: String) -> DataParallel {
    DataParallel::join(
        &GroupConfig {
            backend: Backend::Gloo,
            store,
            rank,
            world_size: 2,
            timeout: Duration::from_secs(30),
        },
        Device::Cpu,
    )
    .expect("join")
}

/// How a rank's loss misbehaves at one of its local updates.
#[derive(Clone, Copy)]
enum Fault {
    Error(usize),
    Panic(usize),
}

/// A linear model with fixed weights and its optimizer: the result of `run_updates` with an
/// optional fault, and the final weights' checksum.
fn train_rank(
    rank: usize,
    store: String,
    samples: usize,
    fault: Option<Fault>,
) -> (Result<usize, TrainError>, f64) {
    let dp = join(rank, store);
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
        micro_batch_size: 0,
        minibatch_size: 1,
        epochs: 1,
        seed: 5,
        lr: 0.05,
        max_grad_norm: 0.0,
    };
    let mut calls = 0;
    let result = run_updates(&mut opt, Some(&dp), &vec![1; samples], &plan, |idx| {
        calls += 1;
        match fault {
            Some(Fault::Error(at)) if at == calls - 1 => {
                return Err(TrainError::Invalid(format!(
                    "rank {rank}: cannot build update {calls}"
                )));
            }
            Some(Fault::Panic(at)) if at == calls - 1 => {
                panic!("rank {rank}: a libtorch call panicked");
            }
            _ => {}
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
    fail: [Option<Fault>; 2],
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
    let out = two_ranks([3, 3], [None, Some(Fault::Error(1))]);
    let own = out[1].0.as_ref().unwrap_err().to_string();
    assert!(own.contains("rank 1: cannot build update 2"), "{own}");
    let other = out[0].0.as_ref().unwrap_err().to_string();
    assert!(
        other.contains("another data-parallel rank could not compute its loss in update 2 of 3"),
        "{other}"
    );
    assert_eq!(out[0].1, out[1].1, "both took update 1 and no other");
}

#[test]
fn a_panicking_loss_is_that_ranks_error_and_stops_both() {
    tch::set_num_threads(1);
    let out = two_ranks([3, 3], [None, Some(Fault::Panic(1))]);
    let own = out[1].0.as_ref().unwrap_err().to_string();
    assert!(
        own.contains("panicked") && own.contains("a libtorch call panicked"),
        "{own}"
    );
    assert!(
        out[0]
            .0
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("update 2 of 3")
    );
    assert_eq!(out[0].1, out[1].1);
}

#[test]
fn ranks_with_different_models_refuse_to_broadcast() {
    tch::set_num_threads(1);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let dp = join(rank, format!("127.0.0.1:{port}"));
                let vs = nn::VarStore::new(Device::Cpu);
                // 3 → 4 and 4 → 3 linear layers: the same names, other shapes.
                let (i, o) = if rank == 0 { (3, 4) } else { (4, 3) };
                let _layer = nn::linear(vs.root() / "layer", i, o, Default::default());
                dp.broadcast_parameters(&vs).map_err(|e| e.to_string())
            })
        })
        .collect();
    for h in handles {
        let err = h.join().expect("rank thread").unwrap_err();
        assert!(err.contains("different layouts"), "{err}");
    }
}

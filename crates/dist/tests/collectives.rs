//! Two Gloo ranks in two processes on a loopback TCPStore: all-reduce (sum, average, max over a
//! list of tensors of different shapes), broadcast from a non-zero root, reduce-scatter and
//! all-gather of flat buffers, barrier; and the errors a caller gets for bad configuration and
//! bad tensor lists.
//!
//! This is a `harness = false` test: run without arguments it starts itself twice as the ranks
//! (`RRLHF_TEST_RANK` set) and checks that both exit cleanly.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rrlhf_dist::{Backend, DistError, GroupConfig, ProcessGroup, ReduceOp};
use tch::{Kind, Tensor};

const WORLD: usize = 2;

fn main() {
    tch::set_num_threads(1);
    match std::env::var("RRLHF_TEST_RANK") {
        Ok(rank) => rank_main(
            rank.parse().expect("rank"),
            &std::env::var("RRLHF_TEST_STORE").expect("store"),
        ),
        Err(_) => {
            config_errors();
            launch_ranks();
            println!("collectives: ok");
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn launch_ranks() {
    let store = format!("127.0.0.1:{}", free_port());
    let exe = std::env::current_exe().expect("test binary");
    let mut children: Vec<Child> = (0..WORLD)
        .map(|rank| {
            Command::new(&exe)
                .env("RRLHF_TEST_RANK", rank.to_string())
                .env("RRLHF_TEST_STORE", &store)
                .spawn()
                .expect("spawn a rank")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (rank, child) in children.iter_mut().enumerate() {
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "rank {rank} failed: {status}");
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("rank {rank} did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn config_errors() {
    let cfg = |store: &str, rank, world| GroupConfig {
        backend: Backend::Gloo,
        store: store.into(),
        rank,
        world_size: world,
        timeout: Duration::from_secs(5),
    };
    let message = |c: &GroupConfig| match ProcessGroup::new(c) {
        Err(DistError::Config(m)) => m,
        other => panic!("expected a config error for {c:?}, got {other:?}"),
    };
    assert!(message(&cfg("127.0.0.1:29500", 2, 2)).contains("rank 2 is outside a world of 2"));
    assert!(message(&cfg("no-port", 0, 1)).contains("HOST:PORT"));
    assert!(message(&cfg("host:0", 0, 1)).contains("HOST:PORT"));
    assert!(
        "mpi"
            .parse::<Backend>()
            .unwrap_err()
            .to_string()
            .contains("\"mpi\"")
    );
    assert_eq!("nccl".parse::<Backend>().unwrap(), Backend::Nccl);
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).expect("values")
}

fn rank_main(rank: usize, store: &str) {
    let group = ProcessGroup::new(&GroupConfig {
        backend: Backend::Gloo,
        store: store.into(),
        rank,
        world_size: WORLD,
        timeout: Duration::from_secs(60),
    })
    .expect("join the group");
    assert_eq!((group.rank(), group.world_size()), (rank, WORLD));
    let r = rank as f64;

    // Sum over a list of differently shaped tensors: each element is reduced on its own.
    let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]) * (r + 1.0);
    let b = Tensor::ones([2, 2], (Kind::Float, tch::Device::Cpu)) * (10.0 * r);
    group
        .all_reduce(&[a.shallow_clone(), b.shallow_clone()], ReduceOp::Sum)
        .expect("sum");
    assert_eq!(values(&a), vec![3.0, 6.0, 9.0]);
    assert_eq!(values(&b), vec![10.0; 4]);
    assert_eq!(b.size(), vec![2, 2], "shapes survive packing");

    let c = Tensor::from_slice(&[r, 4.0 * r]);
    group
        .all_reduce(&[c.shallow_clone()], ReduceOp::Avg)
        .expect("average");
    assert_eq!(values(&c), vec![0.5, 2.0]);

    let d = Tensor::from_slice(&[r, -r]);
    group
        .all_reduce(&[d.shallow_clone()], ReduceOp::Max)
        .expect("max");
    assert_eq!(values(&d), vec![1.0, 0.0]);

    // Broadcast from rank 1 overwrites rank 0's values (and leaves rank 1's).
    let e = Tensor::from_slice(&[7.0 * r, 1.0 + r]);
    group.broadcast(&[e.shallow_clone()], 1).expect("broadcast");
    assert_eq!(values(&e), vec![7.0, 2.0]);

    // A list over the 64 MiB bucket size travels in several buckets, each reduced correctly.
    let big: Vec<Tensor> = (0..3)
        .map(|i| Tensor::full([6 << 20], r + i as f64, (Kind::Float, tch::Device::Cpu)))
        .collect();
    group.all_reduce(&big, ReduceOp::Sum).expect("bucketed sum");
    for (i, t) in big.iter().enumerate() {
        let expected = 1.0 + 2.0 * i as f64;
        assert_eq!(t.min().double_value(&[]), expected);
        assert_eq!(t.max().double_value(&[]), expected);
    }

    // Gradients of a leaf can be reduced in place like any tensor.
    let w = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
    (&w * (r + 1.0)).sum(Kind::Float).backward();
    group
        .all_reduce(&[w.grad()], ReduceOp::Sum)
        .expect("gradients");
    assert_eq!(values(&w.grad()), vec![3.0, 3.0]);

    // A list mixing dtypes is refused before any communication, so the ranks stay in step.
    let err = group
        .all_reduce(
            &[a.shallow_clone(), Tensor::from_slice(&[1i64])],
            ReduceOp::Sum,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("share dtype"), "{err}");
    assert!(group.broadcast(&[a.shallow_clone()], 2).is_err());

    // Reduce-scatter: the sum of every rank's [0..6) + 10·rank, rank r keeping elements 3r..3r+3.
    let whole = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)) + 10.0 * r;
    let part = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu));
    group
        .reduce_scatter(&whole, &part, ReduceOp::Sum)
        .expect("reduce-scatter");
    let sums: Vec<f64> = (0..6).map(|i| 2.0 * i as f64 + 10.0).collect();
    assert_eq!(values(&part), sums[3 * rank..3 * rank + 3].to_vec());
    group
        .reduce_scatter(&whole, &part, ReduceOp::Avg)
        .expect("reduce-scatter average");
    assert_eq!(
        values(&part),
        sums[3 * rank..3 * rank + 3]
            .iter()
            .map(|s| s / 2.0)
            .collect::<Vec<_>>()
    );
    // All-gather: every rank's two elements, in rank order.
    let mine = Tensor::from_slice(&[r, 100.0 + r]);
    let all = Tensor::zeros([4], (Kind::Double, tch::Device::Cpu));
    group.all_gather(&mine, &all).expect("all-gather");
    assert_eq!(values(&all), vec![0.0, 100.0, 1.0, 101.0]);
    // Sizes that do not divide are refused before any communication.
    let err = group
        .reduce_scatter(
            &whole,
            &Tensor::zeros([4], (Kind::Float, tch::Device::Cpu)),
            ReduceOp::Sum,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected 2 × 4"), "{err}");
    assert!(group.reduce_scatter(&whole, &part, ReduceOp::Max).is_err());

    group.barrier().expect("barrier");
    println!("rank {rank}: collectives agree");
}

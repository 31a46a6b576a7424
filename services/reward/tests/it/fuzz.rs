//! Seeded random `Score` requests (texts of any shape, token ids in and out of the vocabulary,
//! unknown and malformed strategies, odd λ and c, every uncertainty set): each is answered or
//! refused with a client-error code naming the problem, never INTERNAL or UNKNOWN, and the
//! service still scores a plain request afterwards.

use rrlhf_proto::reward::v1::{Sample, ScoreRequest};
use rrlhf_util::rng::Rng;
use tonic::Code;

use crate::fixture::{client, config, request, sample, start};

fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[(rng.next_u64() % xs.len() as u64) as usize]
}

fn random_sample(rng: &mut Rng, i: usize) -> Sample {
    if rng.next_u64() % 3 != 0 {
        return sample(i);
    }
    let texts = [
        "",
        " ",
        "Human: hi\n\nAssistant:",
        "\u{0}\u{7f}ü漢字🙂",
        "a very long reply that goes on and on and on and on and on and on and on and on",
    ];
    let ids: Vec<i64> = match rng.next_u64() % 4 {
        0 => vec![],
        1 => (0..rng.next_u64() % 80)
            .map(|_| (rng.next_u64() % 64) as i64)
            .collect(),
        2 => vec![-1, 3, 4],
        _ => vec![i64::MAX, 0, 1],
    };
    Sample {
        id: if rng.next_u64() % 5 == 0 {
            String::new()
        } else {
            format!("s{i}")
        },
        prompt: pick(rng, &texts).to_string(),
        response: pick(rng, &texts).to_string(),
        token_ids: ids,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_are_answered_or_refused_never_internal() {
    let (running, _stop) = start(config()).await;
    let mut c = client(&running).await;
    let mut rng = Rng::new(16);
    let strategies = [
        "",
        "nominal",
        "min",
        "tradeoff",
        "tradeoff:0.4",
        "tradeoff:2",
        "tradeoff:NaN",
        "uwo:-1",
        "uwo:0.5",
        "random",
        "batch_worst_head:0.3",
        "what",
        "tradeoff:",
    ];
    let floats = [0.0f32, 0.5, 1.0, -0.1, 1.5, f32::NAN, f32::INFINITY, 1e30];
    let (mut answered, mut refused) = (0, 0);
    for round in 0..120 {
        let samples = (0..rng.next_u64() % 4 + (round % 7 != 0) as u64)
            .map(|i| random_sample(&mut rng, i as usize))
            .collect();
        let req = ScoreRequest {
            samples,
            strategy: pick(&mut rng, &strategies).to_string(),
            lambda: (rng.next_u64() % 2 == 0).then(|| *pick(&mut rng, &floats)),
            uwo_c: (rng.next_u64() % 3 == 0).then(|| *pick(&mut rng, &floats)),
            uncertainty_set: (rng.next_u64() % 4) as i32,
            seed: rng.next_u64(),
        };
        match c.score(req.clone()).await {
            Ok(_) => answered += 1,
            Err(e) => {
                assert!(
                    ![Code::Internal, Code::Unknown].contains(&e.code()),
                    "round {round}: {req:?} → {e:?}"
                );
                assert!(!e.message().is_empty(), "round {round}: {e:?}");
                refused += 1;
            }
        }
    }
    assert!(
        answered > 0 && refused > 0,
        "{answered} answered, {refused} refused"
    );
    let ok = c.score(request(vec![sample(1)])).await.unwrap();
    assert_eq!(ok.into_inner().scores.len(), 1);
}

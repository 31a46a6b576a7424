//! Seeded random inputs for the services' fuzz tests: token ids in and out of a vocabulary,
//! per-token float rows of the wrong length or not finite, odd texts and paths — and the one
//! assertion they share, that a refused request is refused as the client's fault with a message.

use rrlhf_proto::common::v1::{LoadCheckpointRequest, Sequence};
use rrlhf_util::rng::Rng;
use tonic::{Code, Status};

/// A seeded source of hostile values.
#[derive(Debug)]
pub struct Fuzz {
    rng: Rng,
}

impl Fuzz {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
        }
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    /// True once in `n` draws.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }

    /// Token ids: usually valid for `vocab`, else empty, negative, out of range or huge.
    pub fn ids(&mut self, vocab: i64, max_len: u64) -> Vec<i64> {
        let valid = |f: &mut Self, n: u64| {
            (0..n)
                .map(|_| f.below(vocab as u64) as i64)
                .collect::<Vec<_>>()
        };
        // About one in five is bad, so that a request of several stays valid now and then.
        match self.below(24) {
            0 => Vec::new(),
            1 => vec![-1, 2, 3],
            2 => vec![vocab, 1],
            3 => vec![i64::MAX, i64::MIN],
            4 => {
                let n = max_len * 4 + self.below(64);
                valid(self, n)
            }
            _ => {
                let n = 1 + self.below(max_len);
                valid(self, n)
            }
        }
    }

    /// A float: usually ordinary, else zero, negative, huge or not finite.
    pub fn float(&mut self) -> f32 {
        *self.pick(&[
            0.1,
            0.5,
            1.0,
            1e-3,
            0.0,
            -1.0,
            1e30,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ])
    }

    /// `good`, or now and then a hostile float in its place.
    pub fn or_hostile(&mut self, good: f32) -> f32 {
        if self.one_in(5) { self.float() } else { good }
    }

    /// A count setting: usually one of `good`, now and then 0, past a bound or `u32::MAX`.
    pub fn count(&mut self, good: &[u32], bound: u32) -> u32 {
        if self.one_in(5) {
            *self.pick(&[0, bound + 1, u32::MAX])
        } else {
            *self.pick(good)
        }
    }

    /// One float per token of `len` tokens, or a row of another length, or one not finite.
    pub fn row(&mut self, len: usize) -> Vec<f32> {
        match self.below(12) {
            0 => vec![0.1; len + 1],
            1 => vec![0.1; len.saturating_sub(1)],
            2 => (0..len).map(|_| self.float()).collect(),
            _ => (0..len).map(|i| 0.05 * i as f32 - 0.2).collect(),
        }
    }

    /// A prompt/response pair of ids for a model of `vocab` tokens and length `max_length`.
    pub fn sequence(&mut self, i: usize, vocab: i64, max_length: u64) -> Sequence {
        Sequence {
            id: if self.one_in(5) {
                String::new()
            } else {
                format!("s{i}")
            },
            prompt_ids: self.ids(vocab, max_length / 2),
            response_ids: self.ids(vocab, max_length / 2),
        }
    }

    /// 1–3 sequences, now and then none.
    pub fn sequences(&mut self, vocab: i64, max_length: u64) -> Vec<Sequence> {
        let n = if self.one_in(10) {
            0
        } else {
            1 + self.below(3)
        };
        (0..n)
            .map(|i| self.sequence(i as usize, vocab, max_length))
            .collect()
    }

    /// A text: empty, blank, control characters, several scripts, or long.
    pub fn text(&mut self) -> String {
        self.pick(&[
            "",
            " ",
            "Human: hi\n\nAssistant:",
            "\u{0}\u{7f}ü漢字🙂",
            "a very long reply that goes on and on and on and on and on and on and on and on",
        ])
        .to_string()
    }

    /// A path that is not a checkpoint, inside `scratch` (or not a path at all): empty, NUL,
    /// a file, a directory holding other things, or a fresh path nothing was written to yet.
    /// A save may write the fresh one; it must refuse the others.
    pub fn not_checkpoint(&mut self, scratch: &std::path::Path) -> String {
        let file = scratch.join("not-a-checkpoint.txt");
        let _ = std::fs::write(&file, b"nothing");
        let fresh = scratch.join(format!("fresh-{}", self.rng.next_u64()));
        self.pick(&[
            String::new(),
            "\u{0}".to_string(),
            file.display().to_string(),
            scratch.display().to_string(),
            fresh.display().to_string(),
        ])
        .clone()
    }
}

/// The checkpoint RPCs of a trained service: a save, a load of `path`, and a load of the start
/// weights (`start_weights`, sent with `path` as it is).
#[derive(Debug, Clone, Copy)]
pub enum CheckpointRpc {
    Save,
    Load,
    LoadStart,
}

impl CheckpointRpc {
    /// The `LoadCheckpoint` request of `Load` or `LoadStart` at `path`.
    pub fn load_request(self, path: String) -> LoadCheckpointRequest {
        LoadCheckpointRequest {
            path,
            start_weights: matches!(self, Self::LoadStart),
        }
    }
}

/// One `SaveCheckpoint` or `LoadCheckpoint` (through `call`) at a path that is not a checkpoint
/// ([`Fuzz::not_checkpoint`]): a load must be refused; a save may only write a fresh path; a
/// load of the start weights succeeds only without a path.
pub async fn checkpoint_round(
    fuzz: &mut Fuzz,
    tally: &mut Tally,
    scratch: &std::path::Path,
    round: usize,
    mut call: impl AsyncFnMut(CheckpointRpc, String) -> Result<(), Status>,
) {
    let path = fuzz.not_checkpoint(scratch);
    let what = format!("round {round}: {path:?}");
    match fuzz.below(3) {
        0 => {
            let r = call(CheckpointRpc::Save, path).await;
            tally.count("SaveCheckpoint", &what, r);
        }
        1 => {
            let r = call(CheckpointRpc::Load, path).await;
            assert!(r.is_err(), "{what}: not a checkpoint, yet loaded");
            tally.count("LoadCheckpoint", &what, r);
        }
        _ => {
            let empty = path.is_empty();
            let r = call(CheckpointRpc::LoadStart, path).await;
            assert_eq!(r.is_ok(), empty, "{what}: start weights with a path: {r:?}");
            tally.count("LoadCheckpoint", &what, r);
        }
    }
}

/// After [`checkpoint_round`]s: no save replaced what was not a checkpoint.
pub fn assert_nothing_replaced(scratch: &std::path::Path) {
    assert!(
        scratch.join("not-a-checkpoint.txt").is_file(),
        "a save replaced a directory that is not a checkpoint"
    );
}

/// A sequence every service with a vocabulary of ≥ 9 tokens accepts: the check, after the
/// fuzzing, that the service still serves.
pub fn plain_sequence() -> Sequence {
    Sequence {
        id: "plain".into(),
        prompt_ids: vec![5, 6],
        response_ids: vec![7, 8],
    }
}

/// How a fuzz test's requests were answered, per kind of request.
#[derive(Debug, Default)]
pub struct Tally {
    /// Kind → (answered, refused).
    kinds: std::collections::BTreeMap<&'static str, (usize, usize)>,
}

impl Tally {
    /// Counts `result` under `kind`; a refusal must be the client's fault (never INTERNAL,
    /// UNKNOWN or DATA_LOSS: those are the service's failures) and say what is wrong. `what`
    /// describes the request for the failure message. `FUZZ_DEBUG=1` prints every refusal.
    pub fn count<T>(
        &mut self,
        kind: &'static str,
        what: &str,
        result: Result<T, Status>,
    ) -> Option<T> {
        let entry = self.kinds.entry(kind).or_default();
        match result {
            Ok(v) => {
                entry.0 += 1;
                Some(v)
            }
            Err(e) => {
                assert!(
                    ![Code::Internal, Code::Unknown, Code::DataLoss].contains(&e.code()),
                    "{what} → {e:?}"
                );
                assert!(!e.message().is_empty(), "{what}: {e:?} has no message");
                entry.1 += 1;
                if std::env::var_os("FUZZ_DEBUG").is_some() {
                    eprintln!("{kind}: {}", e.message());
                }
                None
            }
        }
    }

    /// Each of `kinds` was both answered and refused: the inputs reached past validation and
    /// were refused too.
    pub fn assert_mixed(&self, kinds: &[&str]) {
        eprintln!("answered, refused: {:?}", self.kinds);
        for kind in kinds {
            let (answered, refused) = self.kinds.get(kind).copied().unwrap_or_default();
            assert!(
                answered > 0 && refused > 0,
                "{kind}: {answered} answered, {refused} refused"
            );
        }
    }
}

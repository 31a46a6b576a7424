//! The scored samples a run keeps so that people can see *what* the policy learns: the first
//! `rest.samples_per_step` samples of each of the latest `rest.sample_steps` steps, texts cut
//! at [`MAX_TEXT_CHARS`] — bounded memory however long the run. Served at
//! `GET /v1/runs/{id}/samples` and shown by the dashboard.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::experience::Rollout;

/// Characters of a prompt or response kept (the rest is cut, marked with `…`).
pub const MAX_TEXT_CHARS: usize = 2000;

/// One scored sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredSample {
    pub step: usize,
    pub prompt: String,
    pub response: String,
    /// "stop" or "length".
    pub finish_reason: String,
    /// Every reward head's μ and σ for this sample.
    pub head_rewards: Vec<f32>,
    pub head_sigmas: Vec<f32>,
}

/// The kept samples, oldest step first.
#[derive(Debug)]
pub struct SampleStore {
    steps: VecDeque<(usize, Vec<ScoredSample>)>,
    per_step: usize,
    keep_steps: usize,
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

impl SampleStore {
    pub fn new(per_step: usize, keep_steps: usize) -> Self {
        Self {
            steps: VecDeque::new(),
            per_step,
            keep_steps: keep_steps.max(1),
        }
    }

    /// Keeps the first samples of `step`'s batch, forgetting the oldest step beyond the bound.
    pub fn record(&mut self, step: usize, rollouts: &[Rollout]) {
        let kept = rollouts
            .iter()
            .take(self.per_step)
            .map(|r| ScoredSample {
                step,
                prompt: cut(&r.prompt),
                response: cut(&r.response_text),
                finish_reason: r.finish_reason.clone(),
                head_rewards: r.heads_mu.clone(),
                head_sigmas: r.heads_sigma.clone(),
            })
            .collect();
        self.forget_after(step.saturating_sub(1));
        self.steps.push_back((step, kept));
        while self.steps.len() > self.keep_steps {
            self.steps.pop_front();
        }
    }

    /// Forgets the steps after `step` (the run rolled back to it).
    pub fn forget_after(&mut self, step: usize) {
        self.steps.retain(|(s, _)| *s <= step);
    }

    /// The samples of `step` (default: the latest kept), at most `limit` of them.
    pub fn get(&self, step: Option<usize>, limit: usize) -> Result<Vec<ScoredSample>, String> {
        let found = match step {
            None => self.steps.back(),
            Some(s) => self.steps.iter().find(|(k, _)| *k == s),
        };
        match (found, step) {
            (Some((_, samples)), _) => Ok(samples.iter().take(limit).cloned().collect()),
            (None, None) => Ok(Vec::new()),
            (None, Some(s)) => Err(match (self.steps.front(), self.steps.back()) {
                (Some((a, _)), Some((b, _))) => {
                    format!("step {s} is not kept (samples of steps {a}–{b} are)")
                }
                _ => format!("step {s} is not kept (no samples yet)"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(text: &str) -> Rollout {
        Rollout {
            prompt: "p".into(),
            prompt_ids: vec![1],
            response_ids: vec![2],
            response_text: text.into(),
            finish_reason: "stop".into(),
            logprobs: vec![-1.0],
            ref_logprobs: vec![-1.0],
            values: vec![0.0],
            heads_mu: vec![0.5, -0.5],
            heads_sigma: vec![0.1, 0.2],
            source_heads: vec![],
        }
    }

    #[test]
    fn memory_is_bounded_in_steps_samples_and_text() {
        let mut store = SampleStore::new(2, 3);
        let long = "x".repeat(MAX_TEXT_CHARS + 10);
        for step in 1..=5 {
            store.record(step, &[rollout("a"), rollout(&long), rollout("c")]);
        }
        assert_eq!(store.steps.len(), 3, "the latest three steps");
        let latest = store.get(None, 100).unwrap();
        assert_eq!(latest.len(), 2, "two per step");
        assert_eq!(latest[0].step, 5);
        assert_eq!(latest[1].response.chars().count(), MAX_TEXT_CHARS + 1);
        assert_eq!(store.get(Some(3), 1).unwrap().len(), 1);
        let e = store.get(Some(1), 10).unwrap_err();
        assert_eq!(e, "step 1 is not kept (samples of steps 3–5 are)");
        store.forget_after(3);
        assert!(store.get(Some(4), 10).is_err());
        assert!(SampleStore::new(2, 3).get(None, 5).unwrap().is_empty());
    }
}

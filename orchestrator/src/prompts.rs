//! Where prompts come from, and the cursor that walks them: each epoch visits every prompt once
//! in an order drawn from the run seed and the epoch number, so the position `(epoch, index)`
//! is all a checkpoint needs to continue with exactly the prompts an uninterrupted run would
//! have used.

use std::path::Path;

use rrlhf_data::DataError;
use rrlhf_data::lines::{parse_object, read_lines, string_field};
use rrlhf_robust::rng::Rng;
use serde::{Deserialize, Serialize};

use crate::config::{PromptSettings, PromptSource};
use crate::error::{OrchestratorError, Result};

/// Loads the prompt texts of `settings`, skipping those longer than `max_chars`.
pub fn load(settings: &PromptSettings) -> Result<Vec<String>> {
    let path = || {
        settings
            .path
            .as_deref()
            .ok_or_else(|| OrchestratorError::invalid("prompts.path", "required for this source"))
    };
    let all = match settings.source {
        PromptSource::Synthetic => synthetic(),
        PromptSource::Hh => rrlhf_data::sft::load(path()?)
            .map_err(OrchestratorError::Prompts)?
            .examples
            .into_iter()
            .map(|e| e.prompt)
            .collect(),
        PromptSource::Jsonl => jsonl(path()?).map_err(OrchestratorError::Prompts)?,
    };
    let prompts: Vec<String> = all
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .filter(|p| settings.max_chars == 0 || p.chars().count() <= settings.max_chars)
        .collect();
    if prompts.is_empty() {
        return Err(OrchestratorError::invalid(
            "prompts",
            format!(
                "no usable prompt (source {:?}, max_chars {})",
                settings.source, settings.max_chars
            ),
        ));
    }
    Ok(prompts)
}

/// `{"prompt": …}` per line; a line without a string `prompt` is an error naming it.
fn jsonl(path: &Path) -> rrlhf_data::Result<Vec<String>> {
    let mut out = Vec::new();
    for (n, line) in read_lines(path)?
        .iter()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let map = parse_object(path, *n, line)?;
        let prompt =
            string_field(path, *n, &map, "prompt")?.ok_or_else(|| DataError::Malformed {
                path: path.to_path_buf(),
                line: *n,
                message: "no `prompt` field".into(),
            })?;
        out.push(prompt);
    }
    Ok(out)
}

/// A built-in task that needs no data: short requests in the HH dialogue format, the format
/// the project's models are fine-tuned on.
pub fn synthetic() -> Vec<String> {
    const ASKS: [&str; 8] = [
        "Can you tell me about",
        "What should I know about",
        "How do I learn about",
        "Give me advice on",
        "Explain to me",
        "What is your opinion on",
        "Help me understand",
        "Write a short note about",
    ];
    const TOPICS: [&str; 16] = [
        "cooking rice",
        "saving money",
        "training a puppy",
        "growing tomatoes",
        "writing a cover letter",
        "staying safe online",
        "learning to swim",
        "fixing a flat tire",
        "sleeping better",
        "planning a trip",
        "talking to my neighbour",
        "starting to run",
        "keeping a budget",
        "painting a room",
        "making friends at work",
        "reading more books",
    ];
    ASKS.iter()
        .flat_map(|a| {
            TOPICS
                .iter()
                .map(move |t| format!("\n\nHuman: {a} {t}?\n\nAssistant:"))
        })
        .collect()
}

/// Position in the prompt stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub index: usize,
}

/// The prompts in the seeded order of their epochs.
#[derive(Debug)]
pub struct PromptStream {
    prompts: Vec<String>,
    seed: u64,
    order: Vec<usize>,
    pub cursor: Cursor,
}

impl PromptStream {
    pub fn new(prompts: Vec<String>, seed: u64, cursor: Cursor) -> Self {
        let order = permutation(prompts.len(), seed, cursor.epoch);
        Self {
            prompts,
            seed,
            order,
            cursor,
        }
    }

    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// The next `n` prompts, crossing into the next epoch (and its order) when needed.
    pub fn next_batch(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.cursor.index == self.order.len() {
                self.cursor = Cursor {
                    epoch: self.cursor.epoch + 1,
                    index: 0,
                };
                self.order = permutation(self.prompts.len(), self.seed, self.cursor.epoch);
            }
            out.push(self.prompts[self.order[self.cursor.index]].clone());
            self.cursor.index += 1;
        }
        out
    }
}

/// Fisher–Yates with a generator seeded from `(seed, epoch)`.
fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ epoch.wrapping_mul(rrlhf_util::rng::GOLDEN));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prompt_once_per_epoch_and_resumable() {
        let prompts: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let mut a = PromptStream::new(prompts.clone(), 7, Cursor::default());
        let first: Vec<String> = a.next_batch(10);
        let mut sorted = first.clone();
        sorted.sort();
        let mut expect = prompts.clone();
        expect.sort();
        assert_eq!(sorted, expect);
        let _ = a.next_batch(3);
        // A stream rebuilt from the cursor continues identically.
        let mut b = PromptStream::new(prompts, 7, a.cursor);
        assert_eq!(a.next_batch(12), b.next_batch(12));
    }

    #[test]
    fn synthetic_prompts_are_dialogue_prompts() {
        let p = synthetic();
        assert_eq!(p.len(), 128);
        assert!(p.iter().all(|s| s.ends_with("\n\nAssistant:")));
    }
}

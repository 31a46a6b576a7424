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

/// One prompt as its source gives it: text for the actor's tokenizer to encode, or token ids
/// already encoded with that tokenizer (pre-tokenised data sets, benchmarks with prompts of an
/// exact length, actors served without a tokenizer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<i64>),
}

impl PromptInput {
    /// The text, or "" for a prompt given as ids (the ids travel with its sample).
    pub fn text(&self) -> &str {
        match self {
            Self::Text(t) => t,
            Self::Ids(_) => "",
        }
    }

    /// The actor's request form of this prompt, under `id`.
    pub fn to_proto(&self, id: String) -> rrlhf_proto::actor::v1::Prompt {
        let (text, prompt_ids) = match self {
            Self::Text(t) => (t.clone(), vec![]),
            Self::Ids(ids) => (String::new(), ids.clone()),
        };
        rrlhf_proto::actor::v1::Prompt {
            id,
            prompt_ids,
            text,
        }
    }

    fn usable(&self, max_chars: usize) -> bool {
        match self {
            Self::Text(p) => {
                !p.trim().is_empty() && (max_chars == 0 || p.chars().count() <= max_chars)
            }
            Self::Ids(ids) => !ids.is_empty(),
        }
    }
}

/// Loads the prompts of `settings`, skipping empty ones and texts longer than `max_chars`.
pub fn load(settings: &PromptSettings) -> Result<Vec<PromptInput>> {
    let path = || {
        settings
            .path
            .as_deref()
            .ok_or_else(|| OrchestratorError::invalid("prompts.path", "required for this source"))
    };
    let all = match settings.source {
        PromptSource::Synthetic => synthetic().into_iter().map(PromptInput::Text).collect(),
        PromptSource::Hh => rrlhf_data::sft::load(path()?)
            .map_err(OrchestratorError::Prompts)?
            .examples
            .into_iter()
            .map(|e| PromptInput::Text(e.prompt))
            .collect(),
        PromptSource::Jsonl => jsonl(path()?).map_err(OrchestratorError::Prompts)?,
    };
    let prompts: Vec<PromptInput> = all
        .into_iter()
        .filter(|p| p.usable(settings.max_chars))
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

/// `{"prompt": "…"}` or `{"prompt_ids": [ids…]}` per line; a line with neither, with both, or
/// with a field of the wrong type is an error naming the line and the field.
fn jsonl(path: &Path) -> rrlhf_data::Result<Vec<PromptInput>> {
    let mut out = Vec::new();
    for (n, line) in read_lines(path)?
        .iter()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |message: String| DataError::Malformed {
            path: path.to_path_buf(),
            line: *n,
            message,
        };
        let map = parse_object(path, *n, line)?;
        let text = string_field(path, *n, &map, "prompt")?;
        let ids = match map.get("prompt_ids") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_i64().filter(|id| *id >= 0).ok_or_else(|| {
                            bad(format!(
                                "`prompt_ids[{i}]` must be a non-negative integer, got {v}"
                            ))
                        })
                    })
                    .collect::<rrlhf_data::Result<Vec<i64>>>()?,
            ),
            Some(other) => Err(bad(format!(
                "field `prompt_ids` must be an array of token ids, got {other}"
            )))?,
        };
        out.push(match (text, ids) {
            (Some(t), None) => PromptInput::Text(t),
            (None, Some(ids)) => PromptInput::Ids(ids),
            (Some(_), Some(_)) => Err(bad(
                "both `prompt` and `prompt_ids`: give one of them".into()
            ))?,
            (None, None) => Err(bad("no `prompt` or `prompt_ids` field".into()))?,
        });
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
    prompts: Vec<PromptInput>,
    seed: u64,
    order: Vec<usize>,
    pub cursor: Cursor,
}

impl PromptStream {
    pub fn new(prompts: Vec<PromptInput>, seed: u64, cursor: Cursor) -> Self {
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

    /// Goes back to `cursor` (a step that is rolled back gives its prompts to the next try).
    pub fn rewind(&mut self, cursor: Cursor) {
        if cursor.epoch != self.cursor.epoch {
            self.order = permutation(self.prompts.len(), self.seed, cursor.epoch);
        }
        self.cursor = cursor;
    }

    /// The next `n` prompts, crossing into the next epoch (and its order) when needed.
    pub fn next_batch(&mut self, n: usize) -> Vec<PromptInput> {
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
        let prompts: Vec<PromptInput> = (0..10).map(|i| PromptInput::Ids(vec![i])).collect();
        let mut a = PromptStream::new(prompts.clone(), 7, Cursor::default());
        let first: Vec<PromptInput> = a.next_batch(10);
        let key = |p: &PromptInput| match p {
            PromptInput::Ids(ids) => ids[0],
            PromptInput::Text(_) => unreachable!("the stream holds id prompts"),
        };
        let mut sorted: Vec<i64> = first.iter().map(key).collect();
        sorted.sort();
        let expect: Vec<i64> = (0..10).collect();
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

    fn load_jsonl(body: &str) -> Result<Vec<PromptInput>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        std::fs::write(&path, body).unwrap();
        load(&PromptSettings {
            source: PromptSource::Jsonl,
            path: Some(path),
            max_chars: 0,
        })
    }

    #[test]
    fn jsonl_prompts_are_texts_or_token_ids() {
        let got = load_jsonl("{\"prompt\": \"hi\"}\n\n{\"prompt_ids\": [5, 6, 7]}\n").unwrap();
        assert_eq!(
            got,
            vec![
                PromptInput::Text("hi".into()),
                PromptInput::Ids(vec![5, 6, 7])
            ]
        );
        assert_eq!(got[1].text(), "");
        let proto = got[1].to_proto("3".into());
        assert_eq!((proto.id.as_str(), proto.prompt_ids), ("3", vec![5, 6, 7]));
    }

    #[test]
    fn bad_jsonl_prompt_lines_are_named() {
        for (body, needle) in [
            ("{\"prompt\": \"a\", \"prompt_ids\": [1]}", "both"),
            ("{\"other\": 1}", "no `prompt` or `prompt_ids`"),
            ("{\"prompt_ids\": [1, -2]}", "prompt_ids[1]"),
            ("{\"prompt_ids\": \"12\"}", "array of token ids"),
            ("{\"prompt_ids\": [1.5]}", "prompt_ids[0]"),
        ] {
            let e = load_jsonl(&format!("{{\"prompt\": \"ok\"}}\n{body}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle) && e.contains('2'), "{body}: {e}");
        }
    }
}

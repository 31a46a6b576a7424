//! Preference pairs for reward-model training: one prompt, a chosen and a rejected response.
//!
//! Accepted JSONL(.gz) records, detected one record at a time so mixed files work:
//! - Anthropic HH-RLHF `{"chosen": transcript, "rejected": transcript}` (no `prompt`): both
//!   transcripts are split at their last assistant turn and must share the prompt;
//! - generic `{"prompt", "chosen", "rejected", "category"?}`;
//! - UltraFeedback-style `{"instruction" | "prompt", "completions": [{"response" | "text",
//!   "overall_score" | "rating" | "score", …}, …], "source"?}`: every two completions whose
//!   ratings differ by at least [`PairOptions::min_rating_gap`] make a pair.
//!
//! Records that are well-formed but cannot make a pair are skipped and counted by reason in
//! [`SkipCounts`], so a run can report how much of a data set it actually trained on.

use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{DataError, Result};
use crate::hh::split_last_turn;
use crate::lines::{parse_object, read_lines, string_field};

#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// The record's `category` (UltraFeedback: else its `source`), for per-category evaluation.
    pub category: Option<String>,
}

/// What to do with a record that is not valid JSON or fits none of the formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnMalformed {
    /// Fail, naming file and line: a silently shrunk data set would bias the reward model
    /// without anyone noticing.
    #[default]
    Error,
    /// Skip the record and count it in [`SkipCounts::malformed`], for large scraped sets where a
    /// few broken lines are expected. Lines that are not UTF-8 still fail the whole file.
    Skip,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PairOptions {
    /// Smallest rating difference for two rated completions to make a pair (2.0, as in the
    /// paper): closer ratings are mostly annotator noise and would teach the reward model noise.
    pub min_rating_gap: f64,
    pub on_malformed: OnMalformed,
}

impl Default for PairOptions {
    fn default() -> Self {
        Self {
            min_rating_gap: 2.0,
            on_malformed: OnMalformed::Error,
        }
    }
}

/// Why records made no pair. For rated (UltraFeedback-style) records every unordered pair of
/// completions counts once; for the other formats every record counts once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SkipCounts {
    /// HH-RLHF transcripts whose prompts (everything before the last response) differ.
    pub prompt_mismatch: usize,
    /// Chosen and rejected are the same text (up to surrounding whitespace): no preference.
    pub identical_responses: usize,
    /// A transcript without an assistant response, or a blank response.
    pub no_response: usize,
    /// Rated completions closer than [`PairOptions::min_rating_gap`], ties included.
    pub below_rating_gap: usize,
    /// Records skipped under [`OnMalformed::Skip`].
    pub malformed: usize,
}

impl SkipCounts {
    pub fn total(&self) -> usize {
        self.prompt_mismatch
            + self.identical_responses
            + self.no_response
            + self.below_rating_gap
            + self.malformed
    }

    fn add(&mut self, other: &Self) {
        self.prompt_mismatch += other.prompt_mismatch;
        self.identical_responses += other.identical_responses;
        self.no_response += other.no_response;
        self.below_rating_gap += other.below_rating_gap;
        self.malformed += other.malformed;
    }
}

/// The pairs of a file, in file order, and what was skipped.
#[derive(Debug, Default)]
pub struct PairData {
    pub pairs: Vec<PreferencePair>,
    pub skipped: SkipCounts,
}

/// Rating gaps are compared with this relative slack, so a gap written in decimal that lands
/// exactly on the threshold (0.3 − 0.1 against 0.2) is not lost to binary rounding.
const GAP_TOLERANCE: f64 = 1e-9;

/// Fields that may hold a completion's rating, in order of preference.
const RATING_FIELDS: &[&str] = &["overall_score", "rating", "score"];

/// Reads preference pairs from `path` (see the module docs for the formats). A file that
/// yields no pair at all is [`DataError::Unusable`]: training on nothing is never intended.
pub fn load_pairs(path: &Path, opts: &PairOptions) -> Result<PairData> {
    if !(opts.min_rating_gap.is_finite() && opts.min_rating_gap >= 0.0) {
        return Err(DataError::Unusable {
            path: path.to_path_buf(),
            message: format!(
                "min_rating_gap must be a finite number ≥ 0, got {}",
                opts.min_rating_gap
            ),
        });
    }
    let mut data = PairData::default();
    for (n, line) in read_lines(path)? {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = parse_object(path, n, &line).and_then(|map| {
            let rec = Record { path, line: n, map };
            rec.pairs(opts.min_rating_gap)
        });
        match parsed {
            // Merged only once the whole record parsed, so a malformed one leaves nothing behind.
            Ok(out) => {
                data.pairs.extend(out.pairs);
                data.skipped.add(&out.skipped);
            }
            Err(DataError::Malformed { .. }) if opts.on_malformed == OnMalformed::Skip => {
                data.skipped.malformed += 1;
            }
            Err(e) => return Err(e),
        }
    }
    if data.pairs.is_empty() {
        return Err(DataError::Unusable {
            path: path.to_path_buf(),
            message: format!("no usable preference pairs (skipped: {:?})", data.skipped),
        });
    }
    Ok(data)
}

/// What one record yields.
#[derive(Default)]
struct Yield {
    pairs: Vec<PreferencePair>,
    skipped: SkipCounts,
}

impl Yield {
    /// Adds the pair, or counts why it cannot be one.
    fn offer(&mut self, prompt: &str, chosen: &str, rejected: &str, category: &Option<String>) {
        if chosen.trim().is_empty() || rejected.trim().is_empty() {
            self.skipped.no_response += 1;
        } else if chosen.trim() == rejected.trim() {
            self.skipped.identical_responses += 1;
        } else {
            self.pairs.push(PreferencePair {
                prompt: prompt.to_owned(),
                chosen: chosen.to_owned(),
                rejected: rejected.to_owned(),
                category: category.clone(),
            });
        }
    }
}

/// One JSONL record with where it came from, for error messages.
struct Record<'a> {
    path: &'a Path,
    line: usize,
    map: Map<String, Value>,
}

impl Record<'_> {
    fn bad(&self, message: String) -> DataError {
        DataError::Malformed {
            path: self.path.to_path_buf(),
            line: self.line,
            message,
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        string_field(self.path, self.line, &self.map, key)
    }

    fn required(&self, key: &str) -> Result<String> {
        self.string(key)?
            .ok_or_else(|| self.bad(format!("field `{key}` is missing")))
    }

    /// Detects the record's format and makes its pairs.
    fn pairs(&self, min_gap: f64) -> Result<Yield> {
        if self.map.contains_key("completions") {
            self.rated(min_gap)
        } else if self.map.contains_key("prompt") {
            let prompt = self.required("prompt")?;
            let (chosen, rejected) = (self.required("chosen")?, self.required("rejected")?);
            let mut out = Yield::default();
            out.offer(&prompt, &chosen, &rejected, &self.string("category")?);
            Ok(out)
        } else if self.map.contains_key("chosen") || self.map.contains_key("rejected") {
            self.hh()
        } else {
            Err(self.bad(
                "expected `chosen`+`rejected` (HH-RLHF), `prompt`+`chosen`+`rejected` or \
                 `instruction`/`prompt`+`completions`"
                    .into(),
            ))
        }
    }

    fn hh(&self) -> Result<Yield> {
        let (chosen, rejected) = (self.required("chosen")?, self.required("rejected")?);
        let category = self.string("category")?;
        let mut out = Yield::default();
        match (split_last_turn(&chosen), split_last_turn(&rejected)) {
            (Some((prompt, c)), Some((other, r))) if prompt == other => {
                out.offer(prompt, c, r, &category)
            }
            (Some(_), Some(_)) => out.skipped.prompt_mismatch += 1,
            _ => out.skipped.no_response += 1,
        }
        Ok(out)
    }

    /// UltraFeedback-style: every unordered pair of completions is considered once, the higher
    /// rated becoming `chosen`. Ties never make a pair, even with a gap of 0, since they state
    /// no preference.
    fn rated(&self, min_gap: f64) -> Result<Yield> {
        let prompt = match self.string("instruction")? {
            Some(p) => p,
            None => self.required("prompt")?,
        };
        let category = match self.string("category")? {
            Some(c) => Some(c),
            None => self.string("source")?,
        };
        let Some(Value::Array(items)) = self.map.get("completions") else {
            return Err(self.bad("field `completions` must be an array".into()));
        };
        let completions = items
            .iter()
            .enumerate()
            .map(|(i, c)| self.completion(i, c))
            .collect::<Result<Vec<_>>>()?;
        let slack = GAP_TOLERANCE * min_gap.max(1.0);
        let mut out = Yield::default();
        for (i, a) in completions.iter().enumerate() {
            for b in &completions[i + 1..] {
                let (hi, lo) = if a.1 >= b.1 { (a, b) } else { (b, a) };
                let gap = hi.1 - lo.1;
                if gap > 0.0 && gap >= min_gap - slack {
                    out.offer(&prompt, &hi.0, &lo.0, &category);
                } else {
                    out.skipped.below_rating_gap += 1;
                }
            }
        }
        Ok(out)
    }

    /// The text and rating of completion `i`.
    fn completion(&self, i: usize, value: &Value) -> Result<(String, f64)> {
        let Value::Object(c) = value else {
            return Err(self.bad(format!("`completions[{i}]` must be an object")));
        };
        let text = |key: &str| match c.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.bad(format!(
                "field `completions[{i}].{key}` must be a string, got {other}"
            ))),
        };
        let text = match text("response")? {
            Some(t) => t,
            None => text("text")?.ok_or_else(|| {
                self.bad(format!(
                    "`completions[{i}]` has no `response` or `text` field"
                ))
            })?,
        };
        let Some((key, rating)) = RATING_FIELDS
            .iter()
            .find_map(|k| c.get(*k).filter(|v| !v.is_null()).map(|v| (k, v)))
        else {
            return Err(self.bad(format!(
                "`completions[{i}]` has no rating (`overall_score`, `rating` or `score`)"
            )));
        };
        match rating.as_f64() {
            Some(r) if r.is_finite() => Ok((text, r)),
            _ => Err(self.bad(format!(
                "field `completions[{i}].{key}` must be a number, got {rating}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests;

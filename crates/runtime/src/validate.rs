//! Request validation shared by the token-id services (reference, critic, actor), and the
//! log-probability answer they share: errors are
//! INVALID_ARGUMENT with the field path first, e.g. `sequences[2].response_ids: id 70000 is
//! outside [0, 65536)`.

use rrlhf_proto::common::v1::{LogProbsResponse, Sequence, TokenLogProbs};
use tonic::Status;

/// A prompt/response pair of token ids.
pub type Pair = (Vec<i64>, Vec<i64>);

/// The most passes over its samples one `Train` call may ask for: PPO takes a few (1–4 is
/// usual), and a call asking for billions would hold the model for days.
pub const MAX_EPOCHS: u32 = 100;

/// INVALID_ARGUMENT whose message starts with the field.
pub fn invalid(field: impl std::fmt::Display, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

/// Checks a prompt/response pair of token ids: both non-empty, ids in `[0, vocab)`, total length
/// at most `max_len`; returns owned copies.
pub fn token_pair(
    field: &str,
    prompt: &[i64],
    response: &[i64],
    vocab: i64,
    max_len: usize,
) -> Result<(Vec<i64>, Vec<i64>), Status> {
    for (name, ids) in [("prompt_ids", prompt), ("response_ids", response)] {
        if ids.is_empty() {
            return Err(invalid(format!("{field}.{name}"), "must not be empty"));
        }
        if let Some(t) = ids.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(invalid(
                format!("{field}.{name}"),
                format!("id {t} is outside [0, {vocab})"),
            ));
        }
    }
    let n = prompt.len() + response.len();
    if n > max_len {
        return Err(invalid(
            field,
            format!("{n} tokens exceed max_length {max_len}"),
        ));
    }
    Ok((prompt.to_vec(), response.to_vec()))
}

/// Checks per-token training targets (log-probs, advantages, values, returns): one finite value
/// per response token.
pub fn per_token(field: &str, values: &[f32], tokens: usize) -> Result<(), Status> {
    if values.len() != tokens {
        return Err(invalid(
            field,
            format!("has {} values for {tokens} response tokens", values.len()),
        ));
    }
    if let Some(x) = values.iter().find(|x| !x.is_finite()) {
        return Err(invalid(field, format!("{x} is not finite")));
    }
    Ok(())
}

/// The pairs of a request's `sequences` (at least one), each checked by [`token_pair`].
pub fn sequence_pairs(
    sequences: &[Sequence],
    vocab: i64,
    max_len: usize,
) -> Result<Vec<Pair>, Status> {
    if sequences.is_empty() {
        return Err(invalid("sequences", "at least one sequence is required"));
    }
    sequences
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let field = format!("sequences[{i}]");
            token_pair(&field, &s.prompt_ids, &s.response_ids, vocab, max_len)
        })
        .collect()
}

/// The answer to a `LogProbs`-shaped request: each sequence's id with its row of per-token
/// log-probabilities, in request order.
pub fn log_probs_response(sequences: Vec<Sequence>, rows: Vec<Vec<f32>>) -> LogProbsResponse {
    let results = sequences
        .into_iter()
        .zip(rows)
        .map(|(s, logprobs)| TokenLogProbs { id: s.id, logprobs })
        .collect();
    LogProbsResponse { results }
}

/// A training sample's sequence and its two per-token targets (name, values).
pub type SampleParts<'a> = (Option<&'a Sequence>, [(&'static str, &'a [f32]); 2]);

/// The pairs of a `Train` request's samples. `parts` gives a sample's sequence (required,
/// checked by [`token_pair`]) and its two per-token targets (name, values), each checked by
/// [`per_token`] against the response length; errors name `samples[i]…`.
pub fn train_samples<T>(
    samples: &[T],
    parts: impl for<'a> Fn(&'a T) -> SampleParts<'a>,
    vocab: i64,
    max_len: usize,
) -> Result<Vec<Pair>, Status> {
    let mut pairs = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter().enumerate() {
        let (sequence, targets) = parts(sample);
        let field = format!("samples[{i}].sequence");
        let seq = sequence.ok_or_else(|| invalid(&field, "is required"))?;
        let pair = token_pair(&field, &seq.prompt_ids, &seq.response_ids, vocab, max_len)?;
        for (name, values) in targets {
            per_token(&format!("samples[{i}].{name}"), values, pair.1.len())?;
        }
        pairs.push(pair);
    }
    Ok(pairs)
}

/// An engine result that does not answer the work it was given: a bug, so INTERNAL.
pub fn unexpected(done: impl std::fmt::Debug) -> Status {
    Status::internal(format!("unexpected engine result {done:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_field() {
        assert!(token_pair("s[0]", &[1], &[2], 10, 8).is_ok());
        assert_eq!(
            token_pair("s[0]", &[], &[2], 10, 8).unwrap_err().message(),
            "s[0].prompt_ids: must not be empty"
        );
        assert!(
            token_pair("s[1]", &[1], &[10], 10, 8)
                .unwrap_err()
                .message()
                .starts_with("s[1].response_ids: id 10")
        );
        assert!(
            token_pair("s[2]", &[1; 5], &[1; 5], 10, 8)
                .unwrap_err()
                .message()
                .starts_with("s[2]: 10 tokens")
        );
    }

    #[test]
    fn per_token_targets_match_the_response() {
        assert!(per_token("s[0].returns", &[1.0, 2.0], 2).is_ok());
        assert_eq!(
            per_token("s[0].returns", &[1.0], 2).unwrap_err().message(),
            "s[0].returns: has 1 values for 2 response tokens"
        );
        assert_eq!(
            per_token("s[1].advantages", &[f32::NAN], 1)
                .unwrap_err()
                .message(),
            "s[1].advantages: NaN is not finite"
        );
    }
}

//! Anthropic HH-RLHF transcripts (`"\n\nHuman: …\n\nAssistant: …"`, Bai et al. 2022).

/// The marker that opens every assistant turn.
pub const ASSISTANT: &str = "\n\nAssistant:";

/// Splits a transcript at its last assistant turn: the prompt is everything up to and including
/// the `"\n\nAssistant:"` marker, the response is what follows it. `None` when there is no
/// assistant turn or the response is blank.
pub fn split_last_turn(transcript: &str) -> Option<(&str, &str)> {
    let at = transcript.rfind(ASSISTANT)?;
    let (prompt, response) = transcript.split_at(at + ASSISTANT.len());
    (!response.trim().is_empty()).then_some((prompt, response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_last_assistant_turn() {
        let t = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: see you";
        let (p, r) = split_last_turn(t).unwrap();
        assert!(p.ends_with("bye\n\nAssistant:"));
        assert_eq!(r, " see you");
        assert_eq!(format!("{p}{r}"), t);
        assert!(split_last_turn("\n\nHuman: only a question").is_none());
        assert!(split_last_turn("\n\nHuman: q\n\nAssistant:   ").is_none());
    }
}

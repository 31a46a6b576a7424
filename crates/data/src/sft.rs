//! Supervised fine-tuning examples: a prompt (not trained on) and a response (trained on).
//!
//! Accepted inputs, detected per file:
//! - HH-RLHF JSONL(.gz): the `chosen` transcript, split at its last assistant turn;
//! - generic JSONL `{"prompt": …, "response": …}`;
//! - JSONL `{"text": …}` or a plain text file (one example per non-blank line): whole-text
//!   training, i.e. an empty prompt.

use std::path::Path;

use crate::error::{DataError, Result};
use crate::hh::split_last_turn;
use crate::lines::{looks_like_jsonl, parse_object, read_lines, string_field};

#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    pub prompt: String,
    pub response: String,
}

/// The examples of a file and how many records were skipped (with the reason).
#[derive(Debug, Default)]
pub struct SftData {
    pub examples: Vec<SftExample>,
    /// HH records whose chosen transcript has no assistant response.
    pub skipped: usize,
}

/// Reads SFT examples from `path` (see the module docs for the formats).
pub fn load(path: &Path) -> Result<SftData> {
    let lines = read_lines(path)?;
    let mut data = SftData::default();
    if !looks_like_jsonl(&lines) {
        data.examples = lines
            .into_iter()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(_, l)| SftExample {
                prompt: String::new(),
                response: l,
            })
            .collect();
    } else {
        for (n, line) in lines.iter().filter(|(_, l)| !l.trim().is_empty()) {
            let map = parse_object(path, *n, line)?;
            let field = |k| string_field(path, *n, &map, k);
            if let Some(chosen) = field("chosen")? {
                match split_last_turn(&chosen) {
                    Some((p, r)) => data.examples.push(SftExample {
                        prompt: p.to_owned(),
                        response: r.to_owned(),
                    }),
                    None => data.skipped += 1,
                }
            } else if let (Some(prompt), Some(response)) = (field("prompt")?, field("response")?) {
                data.examples.push(SftExample { prompt, response });
            } else if let Some(text) = field("text")? {
                data.examples.push(SftExample {
                    prompt: String::new(),
                    response: text,
                });
            } else {
                return Err(DataError::Malformed {
                    path: path.to_path_buf(),
                    line: *n,
                    message: "expected `chosen`, `prompt`+`response` or `text`".into(),
                });
            }
        }
    }
    if data.examples.is_empty() {
        return Err(DataError::Unusable {
            path: path.to_path_buf(),
            message: "no usable examples".into(),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn reads_each_format() {
        let hh = file(concat!(
            r#"{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}"#,
            "\n",
            r#"{"chosen": "\n\nHuman: no answer", "rejected": "x"}"#,
            "\n"
        ));
        let d = load(hh.path()).unwrap();
        assert_eq!(d.examples.len(), 1);
        assert_eq!(d.skipped, 1);
        assert_eq!(d.examples[0].response, " hello");

        let generic =
            file("{\"prompt\": \"2+2=\", \"response\": \"4\"}\n\n{\"text\": \"just text\"}\n");
        let d = load(generic.path()).unwrap();
        assert_eq!(
            d.examples[0],
            SftExample {
                prompt: "2+2=".into(),
                response: "4".into()
            }
        );
        assert_eq!(d.examples[1].prompt, "");

        let plain = file("line one\n\nline two\n");
        assert_eq!(load(plain.path()).unwrap().examples.len(), 2);
    }

    #[test]
    fn malformed_lines_are_named() {
        let bad = file("{\"prompt\": \"a\", \"response\": \"b\"}\n{not json\n");
        let e = load(bad.path()).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("invalid JSON"), "{e}");
        let wrong = file("{\"prompt\": 3, \"response\": \"b\"}\n");
        let e = load(wrong.path()).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("`prompt`"), "{e}");
        let other = file("{\"question\": \"a\"}\n");
        assert!(
            load(other.path())
                .unwrap_err()
                .to_string()
                .contains("expected `chosen`")
        );
    }
}

//! Text corpora for tokenizer training: every string a data file would feed a model.

use std::path::Path;

use serde_json::Value;

use crate::error::{DataError, Result};
use crate::lines::{looks_like_jsonl, parse_object, read_lines};

/// Fields whose strings are training text in the JSONL formats we read.
const TEXT_FIELDS: &[&str] = &["chosen", "rejected", "prompt", "response", "text"];

/// Texts of `path`: for JSONL, every string in the known text fields of every record; for
/// plain text, every non-blank line.
pub fn texts(path: &Path) -> Result<Vec<String>> {
    let lines = read_lines(path)?;
    let mut out = Vec::new();
    if !looks_like_jsonl(&lines) {
        out.extend(
            lines
                .into_iter()
                .map(|(_, l)| l)
                .filter(|l| !l.trim().is_empty()),
        );
    } else {
        for (n, line) in lines.iter().filter(|(_, l)| !l.trim().is_empty()) {
            let map = parse_object(path, *n, line)?;
            out.extend(
                TEXT_FIELDS
                    .iter()
                    .filter_map(|k| map.get(*k).and_then(Value::as_str))
                    .map(str::to_owned),
            );
        }
    }
    if out.is_empty() {
        return Err(DataError::Unusable {
            path: path.to_path_buf(),
            message: format!("no text found (JSONL fields looked at: {TEXT_FIELDS:?})"),
        });
    }
    Ok(out)
}

//! Line-by-line reading of text and JSONL files, gzip-compressed or not.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{DataError, Result};

/// Opens `path` for reading, decompressing it when it starts with the gzip magic bytes.
pub fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let io = |err| DataError::Io {
        path: path.to_path_buf(),
        err,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(io)?;
    let file = File::open(path).map_err(io)?;
    Ok(if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(BufReader::new(MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

/// Every line of `path` with its 1-based number; an undecodable line is an error naming it.
pub fn read_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let reader = open(path)?;
    reader
        .lines()
        .enumerate()
        .map(|(i, line)| {
            line.map(|l| (i + 1, l)).map_err(|e| DataError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
                message: format!("unreadable line: {e}"),
            })
        })
        .collect()
}

/// Whether the file holds JSONL: its first non-blank line starts with `{`.
pub fn looks_like_jsonl(lines: &[(usize, String)]) -> bool {
    lines
        .iter()
        .find(|(_, l)| !l.trim().is_empty())
        .is_some_and(|(_, l)| l.trim_start().starts_with('{'))
}

/// Parses a JSONL line into an object, or explains why it is not one.
pub fn parse_object(
    path: &Path,
    line: usize,
    text: &str,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let bad = |message: String| DataError::Malformed {
        path: path.to_path_buf(),
        line,
        message,
    };
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad("expected a JSON object".into())),
        Err(e) => Err(bad(format!("invalid JSON: {e}"))),
    }
}

/// The string field `key` of a record: `None` when absent or null, an error naming the field
/// when it holds anything but a string.
pub fn string_field(
    path: &Path,
    line: usize,
    map: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Result<Option<String>> {
    match map.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(DataError::Malformed {
            path: path.to_path_buf(),
            line,
            message: format!("field `{key}` must be a string, got {other}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_plain_and_gzip_alike() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.jsonl");
        std::fs::write(&plain, "{\"a\":1}\n{\"a\":2}\n").unwrap();
        let gz = dir.path().join("a.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), Default::default());
        enc.write_all(b"{\"a\":1}\n{\"a\":2}\n").unwrap();
        enc.finish().unwrap();
        assert_eq!(read_lines(&plain).unwrap(), read_lines(&gz).unwrap());
        let missing = read_lines(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"));
    }
}

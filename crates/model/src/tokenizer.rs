//! Hugging Face tokenizers (`tokenizer.json`) through the `tokenizers` crate, plus training a
//! byte-level BPE of our own. Special-token ids come from `tokenizer_config.json` when present
//! (the file transformers' `AutoTokenizer` writes) and otherwise from well-known token names.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::error::{ModelError, Result};
use crate::fsio::write_atomic;

pub const TOKENIZER_JSON: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_JSON: &str = "tokenizer_config.json";
/// Special tokens of tokenizers trained by rrlhf.
pub const PAD_TOKEN: &str = "<|pad|>";
pub const EOS_TOKEN: &str = "<|endoftext|>";

const KNOWN_EOS: &[&str] = &[
    EOS_TOKEN,
    "<|eot_id|>",
    "<|im_end|>",
    "</s>",
    "<|end_of_text|>",
];
const KNOWN_PAD: &[&str] = &[PAD_TOKEN, "<pad>", "<|finetune_right_pad_id|>"];

/// A loaded tokenizer with the ids of its end-of-sequence and padding tokens.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pub eos_id: i64,
    /// Falls back to `eos_id` when the tokenizer has no pad token (common for Llama).
    pub pad_id: i64,
}

impl TextTokenizer {
    /// Loads `PATH` (a `tokenizer.json` file or a directory holding one).
    pub fn load(path: &Path) -> Result<Self> {
        let (dir, file) = if path.is_dir() {
            (path.to_path_buf(), path.join(TOKENIZER_JSON))
        } else {
            (
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                path.to_path_buf(),
            )
        };
        if !file.exists() {
            return Err(ModelError::Tokenizer {
                path: file,
                message: "file not found".into(),
            });
        }
        let inner = Tokenizer::from_file(&file).map_err(|e| ModelError::Tokenizer {
            path: file.clone(),
            message: e.to_string(),
        })?;
        let declared = read_declared_specials(&dir.join(TOKENIZER_CONFIG_JSON));
        let find = |declared: Option<String>, known: &[&str]| -> Option<i64> {
            declared
                .iter()
                .map(String::as_str)
                .chain(known.iter().copied())
                .find_map(|t| inner.token_to_id(t))
                .map(i64::from)
        };
        let eos_id = find(declared.0, KNOWN_EOS).ok_or_else(|| ModelError::Tokenizer {
            path: file.clone(),
            message: format!("no end-of-sequence token (looked for {KNOWN_EOS:?})"),
        })?;
        let pad_id = find(declared.1, KNOWN_PAD).unwrap_or(eos_id);
        Ok(Self {
            inner,
            path: file,
            eos_id,
            pad_id,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, without adding special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                message: format!("encoding failed: {e}"),
            })?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// `prompt + response + EOS` as ids, fitted into `max_len`: when too long, the prompt keeps
    /// at most its last `max_len / 2` tokens and the response its head (the EOS may be cut).
    /// Returns the ids and the length before truncation.
    pub fn encode_pair(
        &self,
        prompt: &str,
        response: &str,
        max_len: usize,
    ) -> Result<(Vec<i64>, usize)> {
        let (ids, _, full) = self.encode_pair_split(prompt, response, max_len)?;
        Ok((ids, full))
    }

    /// Like [`Self::encode_pair`], also returning how many leading ids are prompt.
    pub fn encode_pair_split(
        &self,
        prompt: &str,
        response: &str,
        max_len: usize,
    ) -> Result<(Vec<i64>, usize, usize)> {
        let mut p = if prompt.is_empty() {
            vec![]
        } else {
            self.encode(prompt)?
        };
        let mut r = self.encode(response)?;
        r.push(self.eos_id);
        let full = p.len() + r.len();
        if full > max_len {
            let keep_p = p.len().min(max_len / 2);
            p.drain(..p.len() - keep_p);
            r.truncate(max_len - keep_p);
        }
        let prompt_len = p.len();
        p.extend(r);
        Ok((p, prompt_len, full))
    }

    /// Text of `ids`, skipping special tokens.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| {
                u32::try_from(i)
                    .map_err(|_| ModelError::InvalidInput(format!("token id {i} is negative")))
            })
            .collect::<Result<_>>()?;
        self.inner
            .decode(&ids, true)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                message: format!("decoding failed: {e}"),
            })
    }

    /// Copies `tokenizer.json` (and `tokenizer_config.json` when present) into `dir`.
    pub fn save_to(&self, dir: &Path) -> Result<()> {
        let src_dir = self.path.parent().unwrap_or(Path::new("."));
        for (src, name) in [
            (self.path.clone(), TOKENIZER_JSON),
            (src_dir.join(TOKENIZER_CONFIG_JSON), TOKENIZER_CONFIG_JSON),
        ] {
            if src.exists() {
                let bytes = std::fs::read(&src).map_err(|e| ModelError::io(&src, e))?;
                write_atomic(&dir.join(name), &bytes)?;
            }
        }
        Ok(())
    }
}

/// (eos, pad) token strings declared in a `tokenizer_config.json`, if any.
fn read_declared_specials(path: &Path) -> (Option<String>, Option<String>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (None, None);
    };
    let Ok(value) = serde_json::from_str::<Value>(&text) else {
        return (None, None);
    };
    // Values are either plain strings or `{"content": "..."}` objects.
    let token = |key: &str| match value.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    (token("eos_token"), token("pad_token"))
}

/// Trains a byte-level BPE (GPT-2 style: every byte is in the base alphabet, so nothing is
/// ever unknown) on `texts` and writes `DIR/tokenizer.json` and `DIR/tokenizer_config.json`
/// with `<|pad|>` (id 0) and `<|endoftext|>` (id 1).
pub fn train_bpe<I>(texts: I, vocab_size: usize, dir: &Path) -> Result<TextTokenizer>
where
    I: Iterator<Item = String> + Send,
{
    let min_vocab = 256 + 2;
    if vocab_size < min_vocab {
        return Err(ModelError::InvalidInput(format!(
            "vocab size {vocab_size} is below {min_vocab} (256 bytes + 2 special tokens)"
        )));
    }
    let specials = vec![
        AddedToken::from(PAD_TOKEN, true),
        AddedToken::from(EOS_TOKEN, true),
    ];
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(alphabet)
        .build();
    let mut tokenizer = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevelDecoder::default()))
        .build()
        .map_err(|e| ModelError::InvalidInput(format!("building tokenizer: {e}")))?;
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| ModelError::InvalidInput(format!("training tokenizer: {e}")))?;
    let tokenizer: Tokenizer = tokenizer.into();
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let json_text = tokenizer
        .to_string(true)
        .map_err(|e| ModelError::InvalidInput(format!("serialising tokenizer: {e}")))?;
    write_atomic(&dir.join(TOKENIZER_JSON), json_text.as_bytes())?;
    let config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "bos_token": null,
        "unk_token": null,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": false,
    });
    write_atomic(
        &dir.join(TOKENIZER_CONFIG_JSON),
        serde_json::to_string_pretty(&config)
            .expect("JSON")
            .as_bytes(),
    )?;
    TextTokenizer::load(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_and_round_trips_any_text() {
        let dir = tempfile::tempdir().unwrap();
        let texts: Vec<String> = (0..200)
            .map(|i| {
                format!("Human: how do I bake bread number {i}?\n\nAssistant: knead the dough.")
            })
            .collect();
        let tok = train_bpe(texts.into_iter(), 300, dir.path()).unwrap();
        assert_eq!((tok.pad_id, tok.eos_id), (0, 1));
        for text in [
            "knead the dough",
            "ünïcödé ✓ and emoji 🍞",
            "  leading spaces\nnewline",
        ] {
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
        let reloaded = TextTokenizer::load(&dir.path().join(TOKENIZER_JSON)).unwrap();
        assert_eq!(
            reloaded.encode("bread").unwrap(),
            tok.encode("bread").unwrap()
        );
        assert!(train_bpe(std::iter::empty(), 100, dir.path()).is_err());
    }
}

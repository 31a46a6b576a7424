//! `rrlhf tokenizer train`: a byte-level BPE from a text or JSONL(.gz) corpus.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE and save DIR/tokenizer.json (+ tokenizer_config.json).
    Train {
        /// Text file (one text per line) or JSONL(.gz) (HH-RLHF, prompt/response, text).
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: TokenizerCommand) -> Result<()> {
    match cmd {
        TokenizerCommand::Train {
            data,
            vocab_size,
            out,
        } => {
            let tok = train(&data, vocab_size, &out)?;
            println!(
                "tokenizer: {} tokens (pad {}, eos {}) → {}",
                tok.vocab_size(),
                tok.pad_id,
                tok.eos_id,
                tok.path().display()
            );
            Ok(())
        }
    }
}

pub fn train(
    data: &std::path::Path,
    vocab_size: usize,
    out: &std::path::Path,
) -> Result<rrlhf_model::TextTokenizer> {
    let texts = rrlhf_data::corpus::texts(data).context("reading the corpus")?;
    let tok = rrlhf_model::tokenizer::train_bpe(texts.into_iter(), vocab_size, out)
        .context("training the tokenizer")?;
    Ok(tok)
}

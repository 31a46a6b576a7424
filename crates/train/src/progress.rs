//! What a training job shows and records as it goes: a progress bar and a JSONL step log.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::error::{Result, TrainError};

/// A bar over `steps` named `name`, or a hidden one.
pub fn progress_bar(name: &str, steps: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps as u64);
    let template =
        format!("{name} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}] {{msg}}");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// One JSON object per line, flushed at the end.
pub struct StepLogger {
    path: PathBuf,
    out: BufWriter<File>,
}

impl StepLogger {
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|err| TrainError::Io {
            path: path.to_path_buf(),
            err,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    pub fn write(&mut self, record: &impl Serialize) -> Result<()> {
        let line = serde_json::to_string(record).expect("log records serialise");
        writeln!(self.out, "{line}").map_err(|err| TrainError::Io {
            path: self.path.clone(),
            err,
        })
    }

    pub fn finish(mut self) -> Result<()> {
        self.out.flush().map_err(|err| TrainError::Io {
            path: self.path.clone(),
            err,
        })
    }
}

//! `rrlhf-data`: reading the data sets rrlhf trains and evaluates on.
//!
//! Files are JSONL (optionally gzip-compressed, detected by content) or plain text. Every
//! malformed record is an error naming the file and line. Splits are deterministic functions
//! of a seed and the record index, so they never change between runs or machines.

pub mod corpus;
pub mod error;
pub mod hh;
pub mod lines;
pub mod preference;
pub mod sft;
pub mod split;

pub use error::{DataError, Result};
pub use preference::{OnMalformed, PairData, PairOptions, PreferencePair, SkipCounts, load_pairs};
pub use sft::{SftData, SftExample};

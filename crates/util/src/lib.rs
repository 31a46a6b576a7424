//! `rrlhf-util`: small pieces that several rrlhf crates need and that must exist once — no
//! tensor library, no async runtime.
//!
//! - [`cancel`]: whether the batch running on an engine thread still has a caller waiting.
//! - [`fsio`]: crash-safe writes of a file or a whole directory (a reader sees the old one or
//!   the complete new one, never half).
//! - [`lora`]: the settings of LoRA adapters (the adapters themselves are `rrlhf-model`'s).
//! - [`rng`]: the project's seeded generators, fixed algorithms so results reproduce across
//!   versions and machines.

pub mod cancel;
pub mod fsio;
pub mod lora;
pub mod rng;

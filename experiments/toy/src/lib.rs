//! `rrlhf-toy`: the toy model of the paper's §4 (Fig. 1), as a seeded, paired experiment.
//!
//! 8 prompts × 8 responses; the best response to prompt i is i. An ideal annotator prefers the
//! diagonal response over a few random others per prompt; Bradley–Terry RMs are trained on those
//! pairs (a nominal RM and extra RMs from other seeds, same data); a 3-layer MLP policy over the
//! one-hot prompt is trained by PPO as a one-step bandit with a KL penalty to its initial self.
//! Two ensembles of as many members: the *deep ensemble* (the nominal RM and the extra RMs,
//! independent networks) and one *multi-head* RM whose heads share a trunk, as the paper's BRME.
//! Conditions — standard RLHF (nominal RM only, λ = 1), the robust mix `λ·nominal + (1−λ)·min`
//! for several λ, the ensemble `mean` and UWO `mean − c·variance` (Coste et al. 2023), over
//! either ensemble — share, within a seed, the data, the RMs, the policy initialisation and the
//! sampling stream, so they are compared seed by seed.
//!
//! - [`mlp`]: the deterministic MLPs (weights drawn from our own generator, not libtorch's).
//! - [`reward`]: preference data, RM architectures (one head or several) and Bradley–Terry
//!   training.
//! - [`bandit`]: PPO on the 8 × 8 bandit.
//! - [`experiment`]: conditions, seeds, paired statistics.
//! - [`report`]: JSON, a Markdown table and heatmaps.

pub mod bandit;
pub mod experiment;
pub mod mlp;
pub mod report;
pub mod reward;

pub use experiment::{ToyConfig, ToyResult, run};

/// Prompts and responses of the toy.
pub const N: usize = 8;

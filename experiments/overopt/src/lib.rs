//! `rrlhf-overopt`: the gold-reward testbed of issue 6. The true reward is known (a hidden
//! function of the response text, [`gold`]); an annotator labels pairs from it with noise, so
//! that it agrees with gold on ~70% of pairs as the paper's human annotators agree with experts
//! ([`annotator`]); a BRME trained on a limited number of such labels is the imperfect proxy PPO
//! optimises. [`tables`] turns the runs' per-step metrics into the paper's tables and plots.

pub mod annotator;
pub mod budget;
pub mod gold;
pub mod tables;

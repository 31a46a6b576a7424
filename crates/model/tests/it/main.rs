//! Integration tests of `rrlhf-model`, compiled into one binary (linking libtorch is slow).

mod checkpointing;
mod common;
mod generation;
mod heads;
mod loading;
mod lora;
mod parity;
mod reward;
mod rollout;

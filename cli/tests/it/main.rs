//! End-to-end tests of the `rrlhf` binary on the shared HH-RLHF data, one test binary.

mod bf16;
mod chaos;
mod commands;
mod dashboard;
mod errors;
mod fixture;
mod launch;
mod lora;
mod pipeline;
mod reward;

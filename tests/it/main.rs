//! End-to-end tests of reward-robust PPO: the orchestrator drives the four real services over
//! loopback gRPC with the test kit's tiny models.

mod dashboard;
mod fusion;
mod lora;
mod ppo;
mod reproducible;
mod resilience;
mod rest;
mod restarts;
mod tls;

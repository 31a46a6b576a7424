//! End-to-end tests of reward-robust PPO: the orchestrator drives the four real services over
//! loopback gRPC with tiny models.

mod fixture;
mod ppo;
mod resilience;
mod rest;

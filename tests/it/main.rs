//! End-to-end tests of reward-robust PPO: the orchestrator drives the four real services over
//! loopback gRPC with the test kit's tiny models; and what crosses services (a service's panic
//! seen by its callers).

mod ppo;
mod resilience;
mod rest;

//! `rrlhf_testkit`: what rrlhf's tests share, so no test file builds its own fixtures.
//!
//! - [`models`]: tiny models built once per test binary in a temporary directory — a policy with
//!   its tokenizer, a stage-1 reward model (the critic's start), a 3-head BRME with spread-out
//!   heads — and [`models::causal_lm`] for a test that needs its own architecture or vocabulary.
//! - [`pki`]: a CA with server and client certificates, for TLS and mutual-TLS tests.
//! - [`serve`]: a service started on `127.0.0.1:0` (one libtorch thread), waiting until health
//!   says SERVING; clients connect to its URL.
//! - [`fuzz`]: seeded hostile inputs and the assertion every fuzz test makes of the answers.
//! - [`browser`]: a headless Chromium driven over the DevTools protocol (dashboard tests).
//! - [`cluster`]: all four services in this process, and a quick PPO run against them.
//!
//! The end-to-end tests across services live beside this library, in `tests/it/`.

pub mod browser;
pub mod cluster;
pub mod fuzz;
pub mod models;
pub mod pki;
pub mod serve;

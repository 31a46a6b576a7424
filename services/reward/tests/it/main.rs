//! End-to-end tests of the reward service: real gRPC on 127.0.0.1:0, a real (tiny) BRME
//! checkpoint and tokenizer on disk, no sleeps.

mod basics;
mod fixture;
mod fuzz;
mod python_client;
mod security;
mod streaming;

//! Data parallelism through PyTorch's own distributed engine (c10d), for the actor and critic
//! ranks: a [`ProcessGroup`] joins its peers through a TCPStore that rank 0 hosts, over Gloo
//! (CPU tensors) or NCCL (CUDA tensors) — the same calls with another backend name — and offers
//! the collectives data-parallel training needs: all-reduce, broadcast and barrier.
//!
//! The collectives are c10d's; a small C++ shim (`csrc/`) adapts them to a C ABI. Every rank
//! must issue the same collectives in the same order, as with `torch.distributed`.

// The FFI boundary is the one place this workspace needs `unsafe`.
#![allow(unsafe_code)]

mod ffi;
mod group;

pub use group::{Backend, DistError, GroupConfig, ProcessGroup, ReduceOp};

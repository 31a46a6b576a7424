//! `rrlhf-deploy-check`: renders `deploy/k8s` overlays with the subset of Kustomize they use
//! (`resources` files and directories, `namespace`, `replicas`, `configMapGenerator` with
//! `files`/`literals` and `create`/`replace`/`merge`, `disableNameSuffixHash`) and checks what a
//! deployment depends on, so a broken manifest fails `make test` rather than a cluster rollout.

pub mod memory;
pub mod plan;
pub mod render;
pub mod validate;

pub use render::render;
pub use validate::{Placement, validate};

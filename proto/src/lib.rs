//! `rrlhf-proto`: the generated gRPC API of rrlhf (package `rrlhf.<service>.v1`).
//!
//! The `.proto` files in this crate's `rrlhf/` directory are the source of truth and document
//! every field; external callers compile them with their own toolchain (see `docs/api.md`).

/// Types shared by the services.
pub mod common {
    pub mod v1 {
        tonic::include_proto!("rrlhf.common.v1");
    }
}

/// The reward service (BRME scoring), the API external pipelines call.
pub mod reward {
    pub mod v1 {
        tonic::include_proto!("rrlhf.reward.v1");
    }
}

/// The reference service: log-probabilities under the frozen SFT policy.
pub mod reference {
    pub mod v1 {
        tonic::include_proto!("rrlhf.reference.v1");
    }
}

/// The critic service: PPO's value model.
pub mod critic {
    pub mod v1 {
        tonic::include_proto!("rrlhf.critic.v1");
    }
}

/// The actor service: the policy being trained.
pub mod actor {
    pub mod v1 {
        tonic::include_proto!("rrlhf.actor.v1");
    }
}

/// Encoded `FileDescriptorSet` of every rrlhf proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rrlhf_descriptor");

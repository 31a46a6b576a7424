//! Compiles `rrlhf/**/*.proto` with protox (pure Rust, no system `protoc`) and generates the
//! tonic client/server code plus a descriptor set for gRPC reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "rrlhf/common/v1/common.proto",
    "rrlhf/reward/v1/reward.proto",
    "rrlhf/reference/v1/reference.proto",
    "rrlhf/critic/v1/critic.proto",
    "rrlhf/actor/v1/actor.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(PROTOS, ["."])?;
    let descriptor_path = out.join("rrlhf_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_fds(descriptors)?;
    Ok(())
}

//! Flags shared by commands that load a model.

use anyhow::Result;
use clap::Args;
use rrlhf_model::Placement;
use rrlhf_model::device::set_threads;

#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Parameter dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// libtorch intra-op threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl RuntimeArgs {
    /// Applies the thread setting and returns where to load models.
    pub fn placement(&self) -> Result<Placement> {
        set_threads(self.threads);
        Ok(Placement::parse(&self.device, &self.dtype)?)
    }
}

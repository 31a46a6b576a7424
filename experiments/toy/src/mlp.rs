//! A 3-layer tanh MLP whose initial weights come from a seeded SplitMix generator, so every
//! run of a seed starts from the same parameters whatever other threads do with libtorch's RNG.

use rrlhf_robust::rng::Rng;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

pub struct Mlp {
    pub vs: nn::VarStore,
    layers: [nn::Linear; 3],
}

impl Mlp {
    pub fn new(input: i64, hidden: i64, output: i64, seed: u64) -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let layers = [
            nn::linear(&root / "l1", input, hidden, Default::default()),
            nn::linear(&root / "l2", hidden, hidden, Default::default()),
            nn::linear(&root / "l3", hidden, output, Default::default()),
        ];
        let mut rng = Rng::new(seed);
        tch::no_grad(|| {
            for l in &layers {
                let fan_in = l.ws.size()[1] as f64;
                let bound = 1.0 / fan_in.sqrt();
                let mut fill = |t: &Tensor| {
                    let n = t.numel();
                    let v: Vec<f32> = (0..n)
                        .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                        .collect();
                    t.shallow_clone()
                        .copy_(&Tensor::from_slice(&v).view(t.size().as_slice()));
                };
                fill(&l.ws);
                if let Some(b) = &l.bs {
                    fill(b);
                }
            }
        });
        Self { vs, layers }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.layers[0].forward(x).tanh();
        let h = self.layers[1].forward(&h).tanh();
        self.layers[2].forward(&h)
    }
}

/// The `n × n` identity: row i is the one-hot of i.
pub fn one_hots(n: usize) -> Tensor {
    Tensor::eye(n as i64, (Kind::Float, Device::Cpu))
}

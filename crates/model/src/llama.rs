//! The Llama-family decoder backbone (Llama 2/3, Qwen2), numerically matching transformers'
//! `LlamaModel` / `Qwen2Model` (Touvron et al. 2023; reference: `modeling_llama.py`).
//!
//! Unlike the usual inference-only ports, `forward` takes an explicit attention mask and
//! position ids and returns hidden states for every position, because PPO needs full-sequence
//! log-probabilities and values over padded batches. Qwen2 differs only in its q/k/v biases.
//! Tensor names are built one path segment at a time and match the HF checkpoint layout
//! (`model.layers.{i}.self_attn.q_proj.weight`, ...).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::ModelConfig;
use crate::kv_cache::KvCache;
use crate::mask::causal_padding_mask;
use crate::rope::{self, Rope};

/// Weight init used for fresh models (transformers' `initializer_range` default).
pub(crate) fn normal_init() -> nn::Init {
    nn::Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    }
}

pub(crate) fn linear(p: nn::Path, input: i64, output: i64, bias: bool) -> nn::Linear {
    let cfg = nn::LinearConfig {
        ws_init: normal_init(),
        bs_init: bias.then_some(nn::Init::Const(0.0)),
        bias,
    };
    nn::linear(p, input, output, cfg)
}

/// Root-mean-square layer norm, computed in f32 whatever the parameter dtype.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.var("weight", &[dim], nn::Init::Const(1.0)),
            eps,
        }
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let kind = xs.kind();
        let x = xs.to_kind(Kind::Float);
        let var = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = x * (var + self.eps).rsqrt();
        &self.weight * normed.to_kind(kind)
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    o_proj: nn::Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        Self {
            q_proj: linear(&p / "q_proj", h, cfg.num_attention_heads * d, cfg.qkv_bias),
            k_proj: linear(&p / "k_proj", h, cfg.num_key_value_heads * d, cfg.qkv_bias),
            v_proj: linear(&p / "v_proj", h, cfg.num_key_value_heads * d, cfg.qkv_bias),
            o_proj: linear(&p / "o_proj", cfg.num_attention_heads * d, h, cfg.o_bias),
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: d,
        }
    }

    fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut (Option<Tensor>, Option<Tensor>)>,
    ) -> Tensor {
        let (b, t, _) = xs.size3().expect("hidden states are [B, T, H]");
        let split = |x: Tensor, n: i64| x.view([b, t, n, self.head_dim]).transpose(1, 2);
        let q = rope::apply(&split(self.q_proj.forward(xs), self.heads), cos, sin);
        let mut k = rope::apply(&split(self.k_proj.forward(xs), self.kv_heads), cos, sin);
        let mut v = split(self.v_proj.forward(xs), self.kv_heads);
        if let Some((ck, cv)) = cache {
            if let (Some(pk), Some(pv)) = (ck.as_ref(), cv.as_ref()) {
                k = Tensor::cat(&[pk, &k], 2);
                v = Tensor::cat(&[pv, &v], 2);
            }
            *ck = Some(k.shallow_clone());
            *cv = Some(v.shallow_clone());
        }
        // Without a mask there is no padding and no cache: plain causal attention.
        let is_causal = mask.is_none();
        let out = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            mask,
            0.0,
            is_causal,
            None,
            self.kv_heads != self.heads,
        );
        let out = out
            .transpose(1, 2)
            .contiguous()
            .view([b, t, self.heads * self.head_dim]);
        self.o_proj.forward(&out)
    }
}

#[derive(Debug)]
struct Mlp {
    gate_proj: nn::Linear,
    up_proj: nn::Linear,
    down_proj: nn::Linear,
}

impl Mlp {
    fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Self {
            gate_proj: linear(&p / "gate_proj", h, i, cfg.mlp_bias),
            up_proj: linear(&p / "up_proj", h, i, cfg.mlp_bias),
            down_proj: linear(&p / "down_proj", i, h, cfg.mlp_bias),
        }
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.down_proj
            .forward(&(self.gate_proj.forward(xs).silu() * self.up_proj.forward(xs)))
    }
}

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        Self {
            input_layernorm: RmsNorm::new(
                &p / "input_layernorm",
                cfg.hidden_size,
                cfg.rms_norm_eps,
            ),
            self_attn: Attention::new(&p / "self_attn", cfg),
            post_attention_layernorm: RmsNorm::new(
                &p / "post_attention_layernorm",
                cfg.hidden_size,
                cfg.rms_norm_eps,
            ),
            mlp: Mlp::new(&p / "mlp", cfg),
        }
    }
}

/// Embeddings, decoder layers and the final norm: everything below the heads.
#[derive(Debug)]
pub struct Backbone {
    pub embed_tokens: nn::Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    rope: Rope,
    pub hidden_size: i64,
}

impl Backbone {
    /// Creates the parameters under `p` (normally `root / "model"`).
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        let embed_cfg = nn::EmbeddingConfig {
            ws_init: normal_init(),
            ..Default::default()
        };
        let layers_path = &p / "layers";
        Self {
            embed_tokens: nn::embedding(
                &p / "embed_tokens",
                cfg.vocab_size,
                cfg.hidden_size,
                embed_cfg,
            ),
            layers: (0..cfg.num_hidden_layers)
                .map(|i| DecoderLayer::new(&layers_path / i, cfg))
                .collect(),
            norm: RmsNorm::new(&p / "norm", cfg.hidden_size, cfg.rms_norm_eps),
            rope: Rope::new(cfg, p.device()),
            hidden_size: cfg.hidden_size,
        }
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Final-norm hidden states `[B, T, H]` for `input_ids` `[B, T]`.
    ///
    /// `attention_mask` is `[B, past + T]` (1 = real token, 0 = padding) and covers the cached
    /// keys too; `None` means no padding anywhere. `positions` is `[B, T]`. With a `cache`,
    /// keys and values of these tokens are appended to it.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        positions: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let mut xs = self.embed_tokens.forward(input_ids);
        let kind = xs.kind();
        let (cos, sin) = self.rope.tables(positions, kind);
        let t = input_ids.size()[1];
        let past = cache.as_ref().map_or(0, |c| c.len());
        // `is_causal` in SDPA aligns the triangle top-left, which is wrong once cached keys
        // precede the queries, so a cache always gets an explicit mask.
        let mask = match (attention_mask, past) {
            (Some(m), _) => Some(causal_padding_mask(m, t, kind)),
            (None, 0) => None,
            (None, p) => {
                let ones = Tensor::ones([input_ids.size()[0], p + t], (Kind::Int64, xs.device()));
                Some(causal_padding_mask(&ones, t, kind))
            }
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let residual = xs.shallow_clone();
            let normed = layer.input_layernorm.forward(&xs);
            let layer_cache = cache.as_deref_mut().map(|c| c.layer_mut(i));
            let attn = layer
                .self_attn
                .forward(&normed, &cos, &sin, mask.as_ref(), layer_cache);
            xs = residual + attn;
            let residual = xs.shallow_clone();
            xs = residual
                + layer
                    .mlp
                    .forward(&layer.post_attention_layernorm.forward(&xs));
        }
        self.norm.forward(&xs)
    }
}

//! The Llama-family decoder backbone (Llama 2/3, Qwen2, Qwen3, Mistral), numerically matching
//! transformers' `LlamaModel` / `Qwen2Model` / `Qwen3Model` / `MistralModel` (Touvron et al.
//! 2023; reference: `modeling_llama.py`).
//!
//! Unlike the usual inference-only ports, `forward` takes an explicit attention mask and
//! position ids and returns hidden states for every position, because PPO needs full-sequence
//! log-probabilities and values over padded batches. Qwen2 differs only in its q/k/v biases,
//! Qwen3 in its per-head query/key norms.
//! Tensor names are built one path segment at a time and match the HF checkpoint layout
//! (`model.layers.{i}.self_attn.q_proj.weight`, ...).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::ModelConfig;
use crate::kv_cache::{CacheStep, LayerCache};
use crate::lora::{Adapter, AdapterSwitch, LoraConfig};
use crate::mask::causal_padding_mask;
use crate::rope::{self, Rope};

/// Weight init used for fresh models (transformers' `initializer_range` default).
pub(crate) fn normal_init() -> nn::Init {
    nn::Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    }
}

/// How a new model fills its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamInit {
    /// Drawn as transformers does for a fresh model (created in f32, then cast).
    Random,
    /// Allocated in the store's dtype and device and left unfilled, because a strict
    /// checkpoint load overwrites every one: no random f32 copy of a large model first.
    Unfilled,
}

/// A trainable variable `name` of shape `dims` under `p`, filled per `fill`.
pub(crate) fn param(
    p: &nn::Path,
    name: &str,
    dims: &[i64],
    init: nn::Init,
    fill: ParamInit,
) -> Tensor {
    match fill {
        ParamInit::Random => p.var(name, dims, init),
        ParamInit::Unfilled => p.add(name, Tensor::empty(dims, (p.kind(), p.device())), true),
    }
}

pub(crate) fn linear(p: nn::Path, input: i64, output: i64, bias: bool, fill: ParamInit) -> Linear {
    Linear {
        ws: param(&p, "weight", &[output, input], normal_init(), fill),
        bs: bias.then(|| param(&p, "bias", &[output], nn::Init::Const(0.0), fill)),
        lora: None,
    }
}

/// A linear layer `x·Wᵀ + b` (HF names `weight`, `bias`), optionally with a LoRA adapter.
#[derive(Debug)]
pub struct Linear {
    pub ws: Tensor,
    pub bs: Option<Tensor>,
    pub lora: Option<Adapter>,
}

impl Linear {
    /// A second handle on the same parameters (for a checkpointed step that outlives a borrow).
    fn share(&self) -> Self {
        Self {
            ws: self.ws.shallow_clone(),
            bs: self.bs.as_ref().map(Tensor::shallow_clone),
            lora: self.lora.as_ref().map(Adapter::share),
        }
    }

    /// Gives the layer an adapter whose tensors live under `p` (the layer's own path).
    fn adapt(&mut self, p: &nn::Path, cfg: &LoraConfig, switch: &AdapterSwitch) {
        let [output, input] = self.ws.size()[..] else {
            unreachable!("linear weights are [out, in]")
        };
        self.lora = Some(Adapter::new(p, input, output, cfg, switch));
    }

    /// Folds the adapter into the weight (W += (α/r)·B·A) and drops it.
    fn merge(&mut self) {
        if let Some(adapter) = self.lora.take() {
            let _guard = tch::no_grad_guard();
            let merged = self.ws.to_kind(Kind::Float) + adapter.merged_delta();
            self.ws.shallow_clone().copy_(&merged);
        }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let out = xs.linear(&self.ws, self.bs.as_ref());
        match self.lora.as_ref().and_then(|a| a.delta(xs)) {
            Some(delta) => out + delta,
            None => out,
        }
    }
}

/// Root-mean-square layer norm, computed in f32 whatever the parameter dtype.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(p: nn::Path, dim: i64, eps: f64, fill: ParamInit) -> Self {
        Self {
            weight: param(&p, "weight", &[dim], nn::Init::Const(1.0), fill),
            eps,
        }
    }

    fn share(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            eps: self.eps,
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
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Qwen3: RMSNorm over each head's queries and keys, before RoPE.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(p: nn::Path, cfg: &ModelConfig, fill: ParamInit) -> Self {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (q, kv) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        Self {
            q_proj: linear(&p / "q_proj", h, q, cfg.qkv_bias, fill),
            k_proj: linear(&p / "k_proj", h, kv, cfg.qkv_bias, fill),
            v_proj: linear(&p / "v_proj", h, kv, cfg.qkv_bias, fill),
            o_proj: linear(&p / "o_proj", q, h, cfg.o_bias, fill),
            qk_norm: cfg.qk_norm.then(|| {
                let norm = |name| RmsNorm::new(&p / name, d, cfg.rms_norm_eps, fill);
                (norm("q_norm"), norm("k_norm"))
            }),
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: d,
        }
    }

    fn share(&self) -> Self {
        Self {
            q_proj: Linear::share(&self.q_proj),
            k_proj: Linear::share(&self.k_proj),
            v_proj: Linear::share(&self.v_proj),
            o_proj: Linear::share(&self.o_proj),
            qk_norm: self.qk_norm.as_ref().map(|(q, k)| (q.share(), k.share())),
            ..*self
        }
    }

    fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<LayerCache<'_>>,
    ) -> Tensor {
        let (b, t, _) = xs.size3().expect("hidden states are [B, T, H]");
        let split = |x: Tensor, n: i64| x.view([b, t, n, self.head_dim]).transpose(1, 2);
        let (mut q, mut k) = (
            split(self.q_proj.forward(xs), self.heads),
            split(self.k_proj.forward(xs), self.kv_heads),
        );
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            (q, k) = (q_norm.forward(&q), k_norm.forward(&k));
        }
        let q = rope::apply(&q, cos, sin);
        let mut k = rope::apply(&k, cos, sin);
        let mut v = split(self.v_proj.forward(xs), self.kv_heads);
        match cache {
            None => {}
            // The prompts attend to themselves; their keys are stored for the decode steps.
            Some(LayerCache::Prefill {
                keys,
                values,
                slots,
            }) => {
                let _ = keys.narrow(2, 0, t).index_copy_(0, slots, &k);
                let _ = values.narrow(2, 0, t).index_copy_(0, slots, &v);
            }
            // Each row writes its one new key in place, then attends over its slot's prefix.
            Some(LayerCache::Decode {
                keys,
                values,
                write_at,
                rows,
                span,
            }) => {
                let at = write_at.expand([rows, self.kv_heads, 1, self.head_dim], false);
                let _ = keys.narrow(0, 0, rows).scatter_(2, &at, &k);
                let _ = values.narrow(0, 0, rows).scatter_(2, &at, &v);
                k = keys.narrow(0, 0, rows).narrow(2, 0, span);
                v = values.narrow(0, 0, rows).narrow(2, 0, span);
            }
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
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(p: nn::Path, cfg: &ModelConfig, fill: ParamInit) -> Self {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Self {
            gate_proj: linear(&p / "gate_proj", h, i, cfg.mlp_bias, fill),
            up_proj: linear(&p / "up_proj", h, i, cfg.mlp_bias, fill),
            down_proj: linear(&p / "down_proj", i, h, cfg.mlp_bias, fill),
        }
    }

    fn share(&self) -> Self {
        Self {
            gate_proj: Linear::share(&self.gate_proj),
            up_proj: Linear::share(&self.up_proj),
            down_proj: Linear::share(&self.down_proj),
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
pub(crate) struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    pub(crate) fn new(p: nn::Path, cfg: &ModelConfig, fill: ParamInit) -> Self {
        let norm = |name: &str| RmsNorm::new(&p / name, cfg.hidden_size, cfg.rms_norm_eps, fill);
        Self {
            input_layernorm: norm("input_layernorm"),
            self_attn: Attention::new(&p / "self_attn", cfg, fill),
            post_attention_layernorm: norm("post_attention_layernorm"),
            mlp: Mlp::new(&p / "mlp", cfg, fill),
        }
    }

    /// The layer's linear modules with their block and HF name (`self_attn`, `q_proj`).
    fn linears_mut(&mut self) -> [(&'static str, &'static str, &mut Linear); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            ("self_attn", "q_proj", &mut a.q_proj),
            ("self_attn", "k_proj", &mut a.k_proj),
            ("self_attn", "v_proj", &mut a.v_proj),
            ("self_attn", "o_proj", &mut a.o_proj),
            ("mlp", "gate_proj", &mut m.gate_proj),
            ("mlp", "up_proj", &mut m.up_proj),
            ("mlp", "down_proj", &mut m.down_proj),
        ]
    }

    fn share(&self) -> Self {
        Self {
            input_layernorm: self.input_layernorm.share(),
            self_attn: self.self_attn.share(),
            post_attention_layernorm: self.post_attention_layernorm.share(),
            mlp: self.mlp.share(),
        }
    }

    /// Pre-norm attention and MLP blocks, each with its residual.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<LayerCache<'_>>,
    ) -> Tensor {
        let normed = self.input_layernorm.forward(xs);
        let xs = xs + self.self_attn.forward(&normed, cos, sin, mask, cache);
        let mlp = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&xs));
        xs + mlp
    }

    /// [`Self::forward`] without a cache, its activations recomputed in backward.
    pub(crate) fn forward_checkpointed(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let layer = self.share();
        let (cos, sin) = (cos.shallow_clone(), sin.shallow_clone());
        let mask = mask.map(Tensor::shallow_clone);
        crate::recompute::checkpoint(xs, move |x| {
            layer.forward(x, &cos, &sin, mask.as_ref(), None)
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The token embedding table `[vocab, hidden]` (no padding index: HF Llama has none).
#[derive(Debug)]
pub struct Embedding {
    pub ws: Tensor,
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.ws, ids, -1, false, false)
    }
}

/// Embeddings, decoder layers and the final norm: everything below the heads.
#[derive(Debug)]
pub struct Backbone {
    pub embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    rope: Rope,
    pub hidden_size: i64,
    /// Recompute each layer's activations in backward instead of keeping them (training
    /// forwards only: with a KV cache or without grad mode the layers run plainly).
    pub activation_checkpointing: bool,
    /// The LoRA adapters' settings and their on/off switch, once [`Self::add_lora`] ran.
    lora: Option<(LoraConfig, AdapterSwitch)>,
}

impl Backbone {
    /// Creates the parameters under `p` (normally `root / "model"`).
    pub fn new(p: nn::Path, cfg: &ModelConfig, fill: ParamInit) -> Self {
        let embed = &p / "embed_tokens";
        let dims = [cfg.vocab_size, cfg.hidden_size];
        let layers_path = &p / "layers";
        Self {
            embed_tokens: Embedding {
                ws: param(&embed, "weight", &dims, normal_init(), fill),
            },
            layers: (0..cfg.num_hidden_layers)
                .map(|i| DecoderLayer::new(&layers_path / i, cfg, fill))
                .collect(),
            norm: RmsNorm::new(&p / "norm", cfg.hidden_size, cfg.rms_norm_eps, fill),
            rope: Rope::new(cfg, p.device()),
            hidden_size: cfg.hidden_size,
            activation_checkpointing: false,
            lora: None,
        }
    }

    /// Adds a LoRA adapter to every targeted linear module of every layer, with tensors under
    /// `p` (the backbone's path, normally `root / "model"`), and returns their shared switch
    /// (on). The caller freezes the base parameters.
    pub fn add_lora(&mut self, p: nn::Path, cfg: &LoraConfig) -> crate::Result<AdapterSwitch> {
        crate::lora::validate(cfg)?;
        if self.lora.is_some() {
            return Err(crate::ModelError::InvalidInput(
                "the model already has LoRA adapters".into(),
            ));
        }
        let switch = AdapterSwitch::default();
        switch.set_enabled(true);
        let layers_path = &p / "layers";
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let layer_path = &layers_path / i;
            for (block, name, linear) in layer.linears_mut() {
                if cfg.targets(name) {
                    linear.adapt(&(&(&layer_path / block) / name), cfg, &switch);
                }
            }
        }
        self.lora = Some((cfg.clone(), switch.clone()));
        Ok(switch)
    }

    /// The adapters' settings and switch, if the backbone has adapters.
    pub fn lora(&self) -> Option<&(LoraConfig, AdapterSwitch)> {
        self.lora.as_ref()
    }

    /// Folds every adapter into its base weight and removes the adapters.
    pub fn merge_lora(&mut self) {
        for layer in &mut self.layers {
            for (_, _, linear) in layer.linears_mut() {
                linear.merge();
            }
        }
        self.lora = None;
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Final-norm hidden states `[B, T, H]` for `input_ids` `[B, T]`.
    ///
    /// `attention_mask` is `[B, T]` (1 = real token, 0 = padding); `None` means no padding.
    /// `positions` is `[B, T]`. With a `cache`, a prefill stores the keys and values of these
    /// tokens, and a decode step (one token per row) also attends to the slots' cached prefixes.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        positions: &Tensor,
        cache: Option<CacheStep<'_>>,
    ) -> Tensor {
        let Some(cache) = cache else {
            // No cache: the whole stack as one trunk (activation checkpointing applies there).
            let trunk = self.forward_trunk(input_ids, attention_mask, positions, self.layers.len());
            return self.norm.forward(&trunk.hidden);
        };
        let mut xs = self.embed_tokens.forward(input_ids);
        let kind = xs.kind();
        let (cos, sin) = self.rope.tables(positions, kind);
        let index = cache.index(kind, xs.device());
        let mask = match (index.mask(), attention_mask) {
            (Some(step_mask), _) => Some(step_mask.shallow_clone()),
            (None, Some(m)) => Some(causal_padding_mask(m, input_ids.size()[1], kind)),
            // No padding, no cached prefix: SDPA's own causal triangle.
            (None, None) => None,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = Some(cache.layer(i, &index));
            xs = layer.forward(&xs, &cos, &sin, mask.as_ref(), layer_cache);
        }
        self.norm.forward(&xs)
    }

    /// The hidden states after the first `layers` decoder layers (no final norm, no cache),
    /// with the rotary tables and mask that further layers need: the whole stack of a
    /// cacheless [`Self::forward`], or the shared trunk under per-head towers
    /// ([`crate::tower::Tower`]).
    pub fn forward_trunk(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        positions: &Tensor,
        layers: usize,
    ) -> Trunk {
        let mut xs = self.embed_tokens.forward(input_ids);
        let kind = xs.kind();
        let (cos, sin) = self.rope.tables(positions, kind);
        let t = input_ids.size()[1];
        // No padding: SDPA's own causal triangle.
        let mask = attention_mask.map(|m| causal_padding_mask(m, t, kind));
        let checkpointed = self.activation_checkpointing && crate::recompute::grad_enabled();
        if checkpointed
            && self
                .lora
                .as_ref()
                .is_some_and(|(c, s)| c.dropout > 0.0 && s.enabled())
        {
            // Recomputation would draw other dropout masks than the forward pass did.
            panic!("activation checkpointing cannot recompute LoRA dropout: use lora dropout 0");
        }
        for layer in self.layers.iter().take(layers) {
            xs = if checkpointed {
                layer.forward_checkpointed(&xs, &cos, &sin, mask.as_ref())
            } else {
                layer.forward(&xs, &cos, &sin, mask.as_ref(), None)
            };
        }
        Trunk {
            hidden: xs,
            cos,
            sin,
            mask,
            checkpointed,
        }
    }
}

/// What [`Backbone::forward_trunk`] hands to the layers above it.
#[derive(Debug)]
pub struct Trunk {
    /// Residual-stream hidden states `[B, T, H]` (before any final norm).
    pub hidden: Tensor,
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    pub(crate) mask: Option<Tensor>,
    pub(crate) checkpointed: bool,
}

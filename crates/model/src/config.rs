//! Hugging Face `config.json` for the Llama family (`LlamaForCausalLM`, `Qwen2ForCausalLM`,
//! `Qwen3ForCausalLM`, `MistralForCausalLM`).
//!
//! Both RoPE spellings are read: transformers 4.x writes `rope_theta` + `rope_scaling`, 5.x writes
//! `rope_parameters`. Any value we cannot run faithfully (another activation, a sliding window,
//! an unknown RoPE type) is an error naming the field instead of a silently different model.
//! The raw JSON object is kept so that fields we do not model (and extra keys that later stages
//! add, such as reward-head metadata) survive a load → save round trip.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::error::{ModelError, Result};

/// The architectures we implement: the Llama decoder and its close relatives. Qwen2 adds
/// q/k/v biases, Qwen3 RMS-normalises each head's queries and keys before RoPE (`q_norm`,
/// `k_norm`), Mistral is Llama without biases (and with a sliding window we refuse unless it
/// covers every position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Mistral,
}

impl Arch {
    pub const ALL: [Self; 4] = [Self::Llama, Self::Qwen2, Self::Qwen3, Self::Mistral];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.model_type() == name)
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Mistral => "mistral",
        }
    }

    pub fn hf_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::Mistral => "MistralForCausalLM",
        }
    }

    /// The transformers class of a one-label reward model on this backbone.
    pub fn hf_sequence_classification_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForSequenceClassification",
            Self::Qwen2 => "Qwen2ForSequenceClassification",
            Self::Qwen3 => "Qwen3ForSequenceClassification",
            Self::Mistral => "MistralForSequenceClassification",
        }
    }
}

/// How rotary frequencies are scaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Positions divided by `factor` (`rope_type = "linear"`).
    Linear {
        factor: f64,
    },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The subset of a HF config that determines the computation.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub max_position_embeddings: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2 always; Llama when `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama `attention_bias`; never in Qwen2).
    pub o_bias: bool,
    /// RMSNorm over each head's queries and keys before RoPE (Qwen3's `q_norm`/`k_norm`).
    pub qk_norm: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
    /// The whole `config.json` object, written back on save.
    pub raw: Map<String, Value>,
}

struct Reader<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Reader<'_> {
    fn err(&self, message: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }

    fn unsupported(&self, field: &str, value: impl ToString, hint: &str) -> ModelError {
        ModelError::Unsupported {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            value: value.to_string(),
            hint: hint.to_string(),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn int(&self, key: &str) -> Result<i64> {
        let v = self
            .get(key)
            .ok_or_else(|| self.err(format!("missing field `{key}`")))?;
        v.as_i64()
            .filter(|&n| n > 0)
            .ok_or_else(|| self.err(format!("`{key}` must be a positive integer, got {v}")))
    }

    fn opt_int(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.int(key).map(Some),
        }
    }

    fn float_or(&self, map: &Map<String, Value>, key: &str, default: f64) -> Result<f64> {
        match map.get(key).filter(|v| !v.is_null()) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| self.err(format!("`{key}` must be a positive number, got {v}"))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(format!("`{key}` must be true or false, got {v}"))),
        }
    }

    fn token_ids(&self, key: &str) -> Result<Vec<i64>> {
        match self.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_i64()
                        .ok_or_else(|| self.err(format!("`{key}` entries must be integers")))
                })
                .collect(),
            Some(v) => v
                .as_i64()
                .map(|id| vec![id])
                .ok_or_else(|| self.err(format!("`{key}` must be an integer or a list, got {v}"))),
        }
    }
}

impl ModelConfig {
    /// Reads and validates `DIR/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        Self::from_json_str(&text, &path)
    }

    /// Parses config JSON; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })?;
        let Value::Object(raw) = value else {
            return Err(ModelError::Config {
                path: path.to_path_buf(),
                message: "the top level must be a JSON object".into(),
            });
        };
        Self::from_map(raw, path)
    }

    fn from_map(raw: Map<String, Value>, path: &Path) -> Result<Self> {
        let r = Reader { path, map: &raw };
        let model_type = r
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| r.err("missing field `model_type`"))?;
        let arch = Arch::parse(model_type).ok_or_else(|| {
            r.unsupported(
                "model_type",
                model_type,
                "supported: llama, qwen2, qwen3, mistral",
            )
        })?;

        let act = r
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(r.unsupported("hidden_act", act, "only silu is implemented"));
        }
        if matches!(arch, Arch::Qwen2 | Arch::Qwen3) && r.bool_or("use_sliding_window", false)? {
            return Err(r.unsupported(
                "use_sliding_window",
                true,
                "sliding-window attention is not implemented",
            ));
        }
        let max_position_embeddings = r.opt_int("max_position_embeddings")?.unwrap_or(2048);
        // Mistral 7B v0.1 attends over a 4096-token window; later Mistral models set null. A
        // window that covers every position is plain causal attention.
        if arch == Arch::Mistral
            && let Some(window) = r.opt_int("sliding_window")?
            && window < max_position_embeddings
        {
            return Err(r.unsupported(
                "sliding_window",
                window,
                "sliding-window attention is not implemented (null, or at least \
                 max_position_embeddings, is plain causal attention)",
            ));
        }

        let hidden_size = r.int("hidden_size")?;
        let num_attention_heads = r.int("num_attention_heads")?;
        let num_key_value_heads = r
            .opt_int("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(r.err(format!(
                "num_attention_heads ({num_attention_heads}) must be a multiple of \
                 num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let head_dim = match r.opt_int("head_dim")? {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(r.err(format!(
                    "hidden_size ({hidden_size}) is not divisible by num_attention_heads \
                     ({num_attention_heads}) and no head_dim is given"
                )));
            }
        };
        if head_dim % 2 != 0 {
            return Err(r.err(format!("head_dim must be even for RoPE, got {head_dim}")));
        }

        let (rope_theta, rope_scaling) = Self::read_rope(&r)?;
        let attention_bias = r.bool_or("attention_bias", false)?;
        let (qkv_bias, o_bias) = match arch {
            Arch::Llama | Arch::Qwen3 => (attention_bias, attention_bias),
            Arch::Qwen2 => (true, false),
            Arch::Mistral => (false, false),
        };
        Ok(Self {
            arch,
            vocab_size: r.int("vocab_size")?,
            hidden_size,
            intermediate_size: r.int("intermediate_size")?,
            num_hidden_layers: r.int("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps: r.float_or(&raw, "rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: r.bool_or("tie_word_embeddings", arch == Arch::Qwen2)?,
            qkv_bias,
            o_bias,
            qk_norm: arch == Arch::Qwen3,
            mlp_bias: arch == Arch::Llama && r.bool_or("mlp_bias", false)?,
            bos_token_id: r.get("bos_token_id").and_then(Value::as_i64),
            eos_token_ids: r.token_ids("eos_token_id")?,
            pad_token_id: r.get("pad_token_id").and_then(Value::as_i64),
            raw,
        })
    }

    /// RoPE base and scaling from either spelling; `rope_parameters` (5.x) wins when present.
    fn read_rope(r: &Reader) -> Result<(f64, RopeScaling)> {
        let (params, field) = match (r.get("rope_parameters"), r.get("rope_scaling")) {
            (Some(Value::Object(p)), _) => (Some(p), "rope_parameters"),
            (Some(v), _) => {
                return Err(r.err(format!("`rope_parameters` must be an object, got {v}")));
            }
            (None, Some(Value::Object(p))) => (Some(p), "rope_scaling"),
            (None, Some(v)) => {
                return Err(r.err(format!("`rope_scaling` must be an object, got {v}")));
            }
            (None, None) => (None, "rope_scaling"),
        };
        let empty = Map::new();
        let params = params.unwrap_or(&empty);
        let theta = match params.get("rope_theta").filter(|v| !v.is_null()) {
            Some(_) => r.float_or(params, "rope_theta", 10_000.0)?,
            None => r.float_or(r.map, "rope_theta", 10_000.0)?,
        };
        let rope_type = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let need = |key: &str| -> Result<f64> {
            match params.get(key).and_then(Value::as_f64) {
                Some(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(r.err(format!(
                    "`{field}.{key}` must be a positive number for rope_type {rope_type}"
                ))),
            }
        };
        let scaling = match rope_type {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: need("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position_embeddings: need("original_max_position_embeddings")?,
            },
            other => {
                return Err(r.unsupported(
                    &format!("{field}.rope_type"),
                    other,
                    "supported: default, linear, llama3",
                ));
            }
        };
        Ok((theta, scaling))
    }

    /// [`Self::new_random`] for `tok`'s vocabulary and special tokens (no BOS).
    pub fn new_random_for(
        arch: Arch,
        preset: &SizePreset,
        tok: &crate::TextTokenizer,
        max_positions: i64,
    ) -> Self {
        Self::new_random(
            arch,
            preset,
            tok.vocab_size() as i64,
            None,
            tok.eos_id,
            Some(tok.pad_id),
            max_positions,
        )
    }

    /// A fresh config for a randomly initialised model (`rrlhf model init`), written in the
    /// transformers 4.x spelling, which 5.x also reads.
    #[allow(clippy::too_many_arguments)]
    pub fn new_random(
        arch: Arch,
        preset: &SizePreset,
        vocab_size: i64,
        bos: Option<i64>,
        eos: i64,
        pad: Option<i64>,
        max_positions: i64,
    ) -> Self {
        let raw = json!({
            "architectures": [arch.hf_class()],
            "model_type": arch.model_type(),
            "vocab_size": vocab_size,
            "hidden_size": preset.hidden_size,
            "intermediate_size": preset.intermediate_size,
            "num_hidden_layers": preset.layers,
            "num_attention_heads": preset.heads,
            "num_key_value_heads": preset.kv_heads,
            "head_dim": preset.hidden_size / preset.heads,
            "hidden_act": "silu",
            "max_position_embeddings": max_positions,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "rope_scaling": null,
            "tie_word_embeddings": preset.tied,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_cache": true,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "torch_dtype": "float32",
        });
        let Value::Object(mut map) = raw else {
            unreachable!("json! object literal")
        };
        // transformers' own defaults would give these a 4096-token window: say there is none.
        match arch {
            Arch::Mistral => map.insert("sliding_window".into(), Value::Null),
            Arch::Qwen2 | Arch::Qwen3 => map.insert("use_sliding_window".into(), false.into()),
            Arch::Llama => None,
        };
        Self::from_map(map, Path::new("<generated>")).expect("generated config is valid")
    }

    /// Records the parameter dtype under both spellings (4.x `torch_dtype`, 5.x `dtype`).
    pub fn set_dtype(&mut self, kind: tch::Kind) {
        let name = crate::device::dtype_name(kind);
        self.raw.insert("torch_dtype".into(), name.into());
        self.raw.insert("dtype".into(), name.into());
    }

    /// The JSON written next to the weights.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&Value::Object(self.raw.clone())).expect("JSON map serialises")
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::fsio::write_atomic(&dir.join("config.json"), self.to_json().as_bytes())
    }
}

/// Model sizes that `rrlhf model init` knows by name.
#[derive(Debug, Clone, Copy)]
pub struct SizePreset {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub layers: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub tied: bool,
}

impl SizePreset {
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            // Small enough that tests train it in seconds on one CPU thread.
            "tiny" => Some(Self {
                hidden_size: 64,
                intermediate_size: 176,
                layers: 2,
                heads: 4,
                kv_heads: 2,
                tied: true,
            }),
            // ~10M parameters with a 4k vocabulary: the demo size for `make run`.
            "small" => Some(Self {
                hidden_size: 256,
                intermediate_size: 688,
                layers: 4,
                heads: 8,
                kv_heads: 4,
                tied: true,
            }),
            // ~125M parameters with a 32k vocabulary (24.6M in each of the untied embedding
            // and LM head, 6.3M per layer): big enough that memory and speed behave as they do
            // at scale, small enough for one CPU. `bench/memory.sh` measures it.
            "medium" => Some(Self {
                hidden_size: 768,
                intermediate_size: 2048,
                layers: 12,
                heads: 12,
                kv_heads: 4,
                tied: false,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_str(text, Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2"#;

    #[test]
    fn reads_llama3_scaling_in_both_spellings() {
        let v4 = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_theta": 500000.0,
            "rope_scaling": {{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        ))
        .unwrap();
        let v5 = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_parameters": {{"rope_type": "llama3",
            "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        ))
        .unwrap();
        assert_eq!(v4.rope_theta, 500000.0);
        assert_eq!(v4.rope_scaling, v5.rope_scaling);
        assert_eq!(v4.rope_theta, v5.rope_theta);
        assert!(matches!(v4.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    }

    #[test]
    fn qwen2_has_qkv_bias_and_ties_by_default() {
        let c = parse(&format!(r#"{{"model_type": "qwen2", {BASE}}}"#)).unwrap();
        assert!(c.qkv_bias && !c.o_bias && c.tie_word_embeddings);
        assert_eq!(c.head_dim, 8);
    }

    #[test]
    fn qwen3_norms_queries_and_keys_and_mistral_has_no_biases() {
        let c = parse(&format!(
            r#"{{"model_type": "qwen3", "head_dim": 16, {BASE}}}"#
        ))
        .unwrap();
        assert!(c.qk_norm && !c.qkv_bias && !c.o_bias && !c.tie_word_embeddings);
        assert_eq!(c.head_dim, 16, "explicit, not hidden_size / heads");
        let c = parse(&format!(
            r#"{{"model_type": "mistral", "sliding_window": null, "attention_bias": true, {BASE}}}"#
        ))
        .unwrap();
        assert!(!c.qk_norm && !c.qkv_bias && !c.o_bias);
    }

    #[test]
    fn a_sliding_window_shorter_than_the_positions_is_refused() {
        // Mistral 7B v0.1: a 4096-token window over 32768 positions.
        let e = parse(&format!(
            r#"{{"model_type": "mistral", "sliding_window": 4096, "max_position_embeddings": 32768, {BASE}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("sliding_window") && e.contains("4096"), "{e}");
        let wide = format!(
            r#"{{"model_type": "mistral", "sliding_window": 32768, "max_position_embeddings": 32768, {BASE}}}"#
        );
        assert!(
            parse(&wide).is_ok(),
            "a window over every position is causal attention"
        );
        let e = parse(&format!(
            r#"{{"model_type": "qwen3", "use_sliding_window": true, {BASE}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("use_sliding_window"), "{e}");
    }

    #[test]
    fn every_arch_round_trips_through_its_model_type() {
        for arch in Arch::ALL {
            assert_eq!(Arch::parse(arch.model_type()), Some(arch));
        }
    }

    #[test]
    fn unsupported_values_name_the_field() {
        let e = parse(&format!(r#"{{"model_type": "gpt2", {BASE}}}"#)).unwrap_err();
        assert!(e.to_string().contains("model_type = gpt2"), "{e}");
        let e = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "hidden_act": "gelu"}}"#
        ))
        .unwrap_err();
        assert!(e.to_string().contains("hidden_act = gelu"), "{e}");
        let e = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"type": "yarn", "factor": 2.0}}}}"#
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("rope_scaling.rope_type = yarn"),
            "{e}"
        );
        let e = parse(r#"{"model_type": "llama", "vocab_size": 10}"#).unwrap_err();
        assert!(e.to_string().contains("hidden_size"), "{e}");
    }

    #[test]
    fn generated_config_round_trips() {
        let preset = SizePreset::by_name("tiny").unwrap();
        let c = ModelConfig::new_random(Arch::Qwen2, &preset, 300, None, 1, Some(0), 512);
        let back = parse(&c.to_json()).unwrap();
        assert_eq!(back.arch, Arch::Qwen2);
        assert_eq!(back.vocab_size, 300);
        assert_eq!(back.eos_token_ids, vec![1]);
    }
}

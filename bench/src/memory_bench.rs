//! `rrlhf-memory-bench`: peak host memory of one actor `Train` step (a PPO update over one
//! mini-batch) on the `medium` preset, for each precision / accumulation / checkpointing /
//! LoRA setting and for two data-parallel Gloo ranks at each ZeRO stage, next to what the
//! arithmetic in `bench/README.md` predicts.
//!
//! Each setting runs in a child process of its own (so one setting's allocator state cannot
//! flatter the next): the child loads the policy as the actor service does, resets the kernel's
//! peak-RSS counter (`/proc/self/clear_refs`), runs one update and reports `VmHWM`. Memory is
//! host RSS, so this measures the CPU engine; on a GPU the same terms land in device memory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rrlhf_actor_service::engine::{Policy, PpoJob};
use rrlhf_dist::{Backend, GroupConfig};
use rrlhf_model::lora::TARGETABLE;
use rrlhf_model::{Arch, CausalLm, LoraConfig, ModelConfig, Placement, SizePreset};
use rrlhf_train::data_parallel::{DataParallel, UpdatePlan};
use rrlhf_train::zero::ZeroStage;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    /// Samples in the mini-batch of the update.
    #[arg(long, default_value_t = 8)]
    minibatch: usize,
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    #[arg(long, default_value_t = 192)]
    response_len: usize,
    #[arg(long, default_value_t = 32000)]
    vocab: i64,
    #[arg(long, default_value = "medium")]
    size: String,
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Run one setting (`DTYPE:MICRO:CKPT:LORA[:zSTAGE]`, e.g. `bf16:2:1:0:z2`) in this process
    /// and print JSON.
    #[arg(long)]
    case: Option<String>,
    /// Measure only these settings (comma-separated `--case` specs); default: all.
    #[arg(long, value_delimiter = ',')]
    settings: Vec<String>,
    /// Internal: this child's rank and the group's store (settings with a ZeRO stage).
    #[arg(long)]
    rank: Option<usize>,
    #[arg(long)]
    store: Option<String>,
    /// The model directory a `--case` child loads.
    #[arg(long)]
    model: Option<PathBuf>,
}

/// One measured setting.
#[derive(Debug, Clone, Copy)]
struct Setting {
    bf16: bool,
    micro: usize,
    checkpointing: bool,
    /// LoRA rank on every targetable module (0: full fine-tuning).
    lora: i64,
    /// Two data-parallel ranks at this ZeRO stage (none: one rank).
    zero: Option<u32>,
}

/// Ranks of the data-parallel settings.
const RANKS: usize = 2;

impl Setting {
    fn parse(text: &str) -> Result<Self> {
        let parts: Vec<&str> = text.split(':').collect();
        let (dtype, micro, ckpt, lora, zero) = match parts[..] {
            [d, m, c, l] => (d, m, c, l, None),
            [d, m, c, l, z] => (d, m, c, l, Some(z)),
            _ => bail!("--case `{text}`: expected DTYPE:MICRO:CKPT:LORA_RANK[:zSTAGE]"),
        };
        Ok(Self {
            bf16: match dtype {
                "bf16" => true,
                "f32" => false,
                other => bail!("--case: dtype `{other}` is neither f32 nor bf16"),
            },
            micro: micro.parse().context("--case: micro-batch size")?,
            checkpointing: ckpt == "1",
            lora: lora.parse().context("--case: LoRA rank")?,
            zero: zero
                .map(|z| {
                    z.strip_prefix('z')
                        .and_then(|n| n.parse().ok())
                        .with_context(|| format!("--case: `{z}` is not zSTAGE"))
                })
                .transpose()?,
        })
    }

    /// The LoRA settings of a LoRA setting: α = 2r on every targetable module.
    fn lora_config(self) -> Option<LoraConfig> {
        (self.lora > 0).then(|| LoraConfig::new(self.lora, 2.0 * self.lora as f64, &TARGETABLE))
    }

    fn spec(self) -> String {
        let dtype = if self.bf16 { "bf16" } else { "f32" };
        let zero = self.zero.map_or(String::new(), |z| format!(":z{z}"));
        format!(
            "{dtype}:{}:{}:{}{zero}",
            self.micro,
            u8::from(self.checkpointing),
            self.lora
        )
    }

    fn label(self, minibatch: usize) -> String {
        let dtype = if self.bf16 {
            "bf16 + fp32 master"
        } else {
            "f32"
        };
        let micro = if self.micro == 0 {
            minibatch
        } else {
            self.micro
        };
        let ckpt = if self.checkpointing {
            ", checkpointing"
        } else {
            ""
        };
        let lora = if self.lora > 0 {
            format!(", LoRA r{}", self.lora)
        } else {
            String::new()
        };
        let zero = match self.zero {
            None => String::new(),
            Some(0) => format!(", {RANKS} ranks, replicated AdamW"),
            Some(z) => format!(", {RANKS} ranks, ZeRO-{z}"),
        };
        format!("{dtype}, micro-batch {micro}{ckpt}{lora}{zero}")
    }
}

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(field: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/self/status")?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("/proc/self/status has no {field}"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed status line")?
        .parse()?;
    Ok(kb * 1024)
}

/// A deterministic PPO job: `n` pairs of fixed lengths, advantages of both signs.
fn job(a: &Args, vocab: i64, micro: usize) -> PpoJob {
    let token = |i: usize| (i as i64 * 7919 + 13) % (vocab - 1) + 1;
    let pairs: Vec<(Vec<i64>, Vec<i64>)> = (0..a.minibatch)
        .map(|s| {
            let base = s * (a.prompt_len + a.response_len);
            let prompt = (0..a.prompt_len).map(|t| token(base + t)).collect();
            let response = (0..a.response_len)
                .map(|t| token(base + a.prompt_len + t))
                .collect();
            (prompt, response)
        })
        .collect();
    let per_token = |f: &dyn Fn(usize, usize) -> f32| -> Vec<Vec<f32>> {
        (0..a.minibatch)
            .map(|s| (0..a.response_len).map(|t| f(s, t)).collect())
            .collect()
    };
    PpoJob {
        old_logprobs: per_token(&|_, _| -10.0),
        advantages: per_token(&|s, t| if (s + t) % 2 == 0 { 1.0 } else { -1.0 }),
        pairs,
        clip_eps: 0.2,
        entropy_coef: 0.0,
        plan: UpdatePlan {
            minibatch_size: a.minibatch,
            micro_batch_size: micro,
            epochs: 1,
            seed: 0,
            lr: 1e-6,
            max_grad_norm: 1.0,
        },
    }
}

/// The child: load, reset the peak, one update, report.
fn measure(a: &Args, setting: Setting, model: &Path) -> Result<Value> {
    tch::set_num_threads(a.threads);
    let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
    let before = status_bytes("VmRSS:")?;
    let placement = Placement::parse("cpu", if setting.bf16 { "bf16" } else { "f32" })?;
    let lora = setting.lora_config();
    let dp = match (setting.zero, a.rank, &a.store) {
        (Some(stage), Some(rank), Some(store)) => Some(
            DataParallel::join(
                &GroupConfig {
                    backend: Backend::Gloo,
                    store: store.clone(),
                    rank,
                    world_size: RANKS,
                    timeout: std::time::Duration::from_secs(600),
                },
                tch::Device::Cpu,
            )?
            .with_zero(ZeroStage::from_level(stage)?),
        ),
        (Some(_), ..) => bail!("a ZeRO setting runs as ranks (--rank, --store)"),
        _ => None,
    };
    let mut policy = Policy::load(model, placement, 0.0, lora.as_ref(), dp)?;
    policy.model.backbone.activation_checkpointing = setting.checkpointing;
    let loaded = status_bytes("VmRSS:")?;
    let load_peak = status_bytes("VmHWM:")?;
    let count = |trainable_only: bool| -> i64 {
        policy
            .model
            .vs
            .variables()
            .values()
            .filter(|t| !trainable_only || t.requires_grad())
            .map(|t| t.numel() as i64)
            .sum()
    };
    let (params, trainable) = (count(false), count(true));
    // Writing 5 resets VmHWM to the current RSS (proc(5), /proc/pid/clear_refs).
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
    let start = std::time::Instant::now();
    let stats = policy.ppo_update(&job(a, policy.model.cfg.vocab_size, setting.micro))?;
    let peak = status_bytes("VmHWM:")?;
    // What stays allocated until the next update (counted from the tensors: freed memory need
    // not leave the process's RSS): weights, gradients still held, optimizer state.
    let bytes = |t: &tch::Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as i64;
    let vars = policy.model.vs.variables();
    let held = vars.values().map(bytes).sum::<i64>()
        + vars
            .values()
            .map(|t| t.grad())
            .filter(tch::Tensor::defined)
            .map(|g| bytes(&g))
            .sum::<i64>()
        + policy.optimizer_bytes();
    Ok(json!({
        "held_after_step": held,
        "setting": setting.spec(),
        "params": params,
        "trainable": trainable,
        "process_before_model": before,
        "after_load": loaded - before,
        "load_peak": load_peak - before,
        "peak_step": peak - before,
        "seconds": start.elapsed().as_secs_f64(),
        "loss": stats.summary.loss_mean,
    }))
}

/// What the arithmetic predicts for a setting, in bytes: (weights, peak of the step, held
/// after it), for `params` parameters of which `trainable` train (all, or a LoRA model's
/// adapters).
fn predict(
    a: &Args,
    cfg: &ModelConfig,
    params: f64,
    trainable: f64,
    s: Setting,
) -> (f64, f64, f64) {
    let b = if s.bf16 { 2.0 } else { 4.0 };
    let (h, kv, i, l, v) = (
        cfg.hidden_size as f64,
        (cfg.num_key_value_heads * cfg.head_dim) as f64,
        cfg.intermediate_size as f64,
        cfg.num_hidden_layers as f64,
        cfg.vocab_size as f64,
    );
    // Weights, plus AdamW's two fp32 moments and, for bf16, the fp32 master copy of what trains
    // (the moments are allocated at load but only become resident when the first step writes
    // them).
    let weights = params * b;
    let state = match s.zero {
        // Sharded: this rank's 1/N of the fp32 master, both moments and the reduced gradient.
        Some(1..) => trainable * 16.0 / RANKS as f64,
        _ => trainable * if s.bf16 { 12.0 } else { 8.0 },
    };
    let persistent = weights + state;
    let micro = if s.micro == 0 { a.minibatch } else { s.micro };
    let tokens = (micro * (a.prompt_len + a.response_len)) as f64;
    // Saved for backward per token and layer: each RMSNorm keeps its f32 input and its output
    // (4H + bH, twice), q/k/v and the attention output and its contiguous copy (b(3H + 2kv)),
    // and the SwiGLU MLP's gate, up, silu(gate) and product (4bI). Attention is taken as
    // flash-style (no T×T term). With LoRA the same count stands as an upper bound (a frozen
    // linear layer needs no saved input, its adapter keeps a rank-r one).
    let per_layer = 2.0 * (4.0 + b) * h + b * (3.0 * h + 2.0 * kv) + 4.0 * b * i;
    let layers = if s.checkpointing {
        // Each layer's input, plus one layer recomputed during backward.
        l * b * h + per_layer
    } else {
        l * per_layer
    };
    // The LM head: logits in b, their f32 copy and log-softmax (kept), and in backward the
    // f32 gradient and its cast back: b + 4·4 bytes per vocabulary entry.
    let head = (b + 16.0) * v;
    // The gradients, in the weights' dtype; a replicated bf16 group also sums fp32 copies of
    // them (4 bytes per parameter more, held until the next update).
    let replicated_copies = if s.zero == Some(0) && s.bf16 {
        4.0
    } else {
        0.0
    };
    let gradients = trainable * (b + replicated_copies);
    // ZeRO-2 releases the gradients once reduced; the other settings keep them until the next
    // update zeroes them.
    let held = persistent + if s.zero == Some(2) { 0.0 } else { gradients };
    (
        weights,
        persistent + gradients + tokens * (layers + head),
        held,
    )
}

fn gib(bytes: f64) -> String {
    format!("{:.2}", bytes / (1u64 << 30) as f64)
}

fn main() -> Result<()> {
    let a = Args::parse();
    if let Some(case) = &a.case {
        let model = a.model.as_deref().context("--case needs --model")?;
        println!("{}", measure(&a, Setting::parse(case)?, model)?);
        return Ok(());
    }
    let preset =
        SizePreset::by_name(&a.size).with_context(|| format!("unknown size {}", a.size))?;
    let cfg = ModelConfig::new_random(Arch::Llama, &preset, a.vocab, Some(1), 2, Some(0), 4096);
    let dir = tempfile::tempdir()?;
    {
        let model = CausalLm::new(cfg.clone(), Placement::default())?;
        model.save(dir.path())?;
    }
    // Every setting, as its `--case` spec: one rank (f32, bf16, accumulation, checkpointing,
    // LoRA r16), then two ranks at each ZeRO stage.
    let settings = [
        "f32:0:0:0",
        "bf16:0:0:0",
        "bf16:2:0:0",
        "bf16:0:1:0",
        "bf16:2:1:0",
        "bf16:0:0:16",
        "bf16:2:1:16",
        "bf16:2:1:0:z0",
        "bf16:2:1:0:z1",
        "bf16:2:1:0:z2",
    ]
    .map(|spec| Setting::parse(spec).expect("a valid spec"));
    let chosen: Vec<Setting> = settings
        .into_iter()
        .filter(|s| a.settings.is_empty() || a.settings.contains(&s.spec()))
        .collect();
    let exe = std::env::current_exe()?;
    println!(
        "{} preset, vocab {}, one update of {} samples × {} tokens, {} threads (GiB; measured = peak RSS of the process minus its RSS before the model was built)\n",
        a.size,
        a.vocab,
        a.minibatch,
        a.prompt_len + a.response_len,
        a.threads
    );
    println!(
        "| setting | weights after load: measured / predicted | peak while loading | peak of the step: measured / predicted | held after the step (tensors) / predicted | step time |"
    );
    println!("|---|---|---|---|---|---|");
    for s in chosen {
        // A data-parallel setting runs as two ranks (one thread each); its row is rank 0's,
        // with the larger of the two peaks.
        let ranks = if s.zero.is_some() { RANKS } else { 1 };
        let store = format!("127.0.0.1:{}", free_port()?);
        let threads = (a.threads / ranks as i32).max(1);
        let children = (0..ranks)
            .map(|rank| {
                let mut cmd = Command::new(&exe);
                cmd.args(["--case", &s.spec(), "--model"])
                    .arg(dir.path())
                    .args(["--minibatch", &a.minibatch.to_string()])
                    .args(["--prompt-len", &a.prompt_len.to_string()])
                    .args(["--response-len", &a.response_len.to_string()])
                    .args(["--threads", &threads.to_string()])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                if ranks > 1 {
                    cmd.args(["--rank", &rank.to_string(), "--store", &store]);
                }
                Ok(cmd.spawn()?)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut reports = Vec::new();
        for child in children {
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "setting {} failed:\n{}",
                    s.spec(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let r: Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("setting {}: bad output", s.spec()))?;
            reports.push(r);
        }
        let num = |k: &str| reports[0][k].as_f64().unwrap_or(f64::NAN);
        let peak_step = reports
            .iter()
            .filter_map(|r| r["peak_step"].as_f64())
            .fold(0.0, f64::max);
        let (weights, peak, held) = predict(&a, &cfg, num("params"), num("trainable"), s);
        println!(
            "| {} | {} / {} | {} | {} / {} | {} / {} | {:.0} s |",
            s.label(a.minibatch),
            gib(num("after_load")),
            gib(weights),
            gib(num("load_peak")),
            gib(peak_step),
            gib(peak),
            gib(num("held_after_step")),
            gib(held),
            num("seconds")
        );
    }
    Ok(())
}

/// A port free on loopback now (for a group's store).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

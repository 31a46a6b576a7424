"""Numerical parity between rrlhf's Rust decoder and Hugging Face transformers.

Two sub-commands, both driven by the Rust test `crates/model/tests/it/parity.rs`:

  make  --out DIR   Builds tiny random checkpoints *with transformers itself* (Llama, Qwen2,
                    Qwen3, Mistral; GQA, tied and untied embeddings, attention biases, Qwen3's
                    q/k norms and explicit head_dim, llama3 RoPE scaling in the 4.x and 5.x
                    config spellings), saves them with `save_pretrained`, and writes
                    the logits transformers computes on a left-padded and a right-padded batch of
                    mixed lengths to DIR/<case>/expected.safetensors.
  check --root DIR  For every DIR/<case>/ that the Rust side wrote (a checkpoint saved by rrlhf and
                    rust_logits.safetensors), loads the checkpoint with transformers and compares
                    its logits on the same batch. Exits 1 when any case differs by more than --tol.

  check-rm --model DIR --inputs FILE [--adapter DIR]
                    Loads a stage-1 reward model that rrlhf saved as *ForSequenceClassification
                    (with a LoRA critic's PEFT adapter applied, if given) and compares
                    transformers' scores on FILE's right-padded ids with rrlhf's rewards.

  check-lora --base DIR --adapter DIR --inputs FILE
                    Loads the base with transformers and rrlhf's LoRA adapter with
                    `peft.PeftModel.from_pretrained`, and compares the adapted logits on FILE's
                    right-padded ids with rrlhf's.

Logits are compared only where the attention mask is 1; padded positions carry no meaning.
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 128
LENGTHS = [9, 5, 1, 7]

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)

LLAMA3_ROPE = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=32,
)


def cases():
    """(name, model class, config, rewrite config.json to the transformers 4.x spelling?)"""
    yield "llama_gqa_untied", LlamaForCausalLM, LlamaConfig(
        **COMMON, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=10000.0
    ), False
    yield "llama_tied_llama3_v4spelling", LlamaForCausalLM, LlamaConfig(
        **COMMON,
        num_key_value_heads=4,
        tie_word_embeddings=True,
        rope_parameters=dict(rope_theta=500000.0, **LLAMA3_ROPE),
    ), True
    yield "llama_bias_llama3_v5spelling", LlamaForCausalLM, LlamaConfig(
        **COMMON,
        num_key_value_heads=1,
        tie_word_embeddings=False,
        attention_bias=True,
        mlp_bias=True,
        rope_parameters=dict(rope_theta=500000.0, **LLAMA3_ROPE),
    ), False
    yield "qwen2_gqa_tied", Qwen2ForCausalLM, Qwen2Config(
        **COMMON, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1000000.0
    ), False
    yield "qwen2_untied", Qwen2ForCausalLM, Qwen2Config(
        **COMMON, num_key_value_heads=1, tie_word_embeddings=False, rope_theta=10000.0
    ), False
    # Qwen3: per-head q/k norms, and a head_dim that is not hidden_size / heads (as in Qwen3-8B).
    yield "qwen3_gqa_headdim_untied", Qwen3ForCausalLM, Qwen3Config(
        **COMMON, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False, rope_theta=1000000.0
    ), False
    yield "qwen3_bias_tied", Qwen3ForCausalLM, Qwen3Config(
        **COMMON, num_key_value_heads=4, head_dim=16, attention_bias=True, tie_word_embeddings=True
    ), False
    yield "mistral_gqa_nowindow", MistralForCausalLM, MistralConfig(
        **COMMON, num_key_value_heads=2, sliding_window=None, tie_word_embeddings=False, rope_theta=1000000.0
    ), False


def randomise(model, seed):
    """Weights large enough that logits are O(1): at the default 0.02 init every model agrees."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.15
            p.copy_(1.0 + noise if "norm" in name else noise)


def batch(side, seed):
    gen = torch.Generator().manual_seed(seed)
    width = max(LENGTHS)
    ids = torch.zeros(len(LENGTHS), width, dtype=torch.long)
    mask = torch.zeros(len(LENGTHS), width, dtype=torch.long)
    for row, n in enumerate(LENGTHS):
        toks = torch.randint(2, VOCAB, (n,), generator=gen)
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, sl] = toks
        mask[row, sl] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0) * mask
    return ids, mask, positions


def logits_of(model, ids, mask, positions):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()


def rewrite_v4_spelling(path):
    """Turns `rope_parameters` (5.x) into top-level `rope_theta` + `rope_scaling` (4.x)."""
    with open(path) as f:
        cfg = json.load(f)
    params = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = params
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)


def make(out):
    torch.manual_seed(0)
    for i, (name, cls, cfg, v4) in enumerate(cases()):
        cfg._attn_implementation = "eager"
        model = cls(cfg).eval()
        randomise(model, seed=100 + i)
        case_dir = os.path.join(out, name)
        model.save_pretrained(os.path.join(case_dir, "model"))
        if v4:
            rewrite_v4_spelling(os.path.join(case_dir, "model", "config.json"))
        tensors = {}
        for side in ("left", "right"):
            ids, mask, positions = batch(side, seed=7 + i)
            tensors[f"{side}_ids"] = ids
            tensors[f"{side}_mask"] = mask
            tensors[f"{side}_positions"] = positions
            tensors[f"{side}_logits"] = logits_of(model, ids, mask, positions)
        save_file(tensors, os.path.join(case_dir, "expected.safetensors"))
        print(f"made {name}")


def check(root, tol):
    worst = 0.0
    failures = []
    names = sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "rust_logits.safetensors")))
    if not names:
        print(f"no cases with rust_logits.safetensors under {root}", file=sys.stderr)
        return 1
    for name in names:
        case_dir = os.path.join(root, name)
        model = AutoModelForCausalLM.from_pretrained(case_dir, attn_implementation="eager").eval().float()
        rust = load_file(os.path.join(case_dir, "rust_logits.safetensors"))
        for side in ("left", "right"):
            ids, mask, positions = rust[f"{side}_ids"], rust[f"{side}_mask"], rust[f"{side}_positions"]
            ours = logits_of(model, ids, mask, positions)
            keep = mask.bool()
            diff = (ours[keep] - rust[f"{side}_logits"][keep]).abs().max().item()
            worst = max(worst, diff)
            status = "ok" if diff <= tol else "FAIL"
            print(f"{name} {side}: max |Δlogit| = {diff:.2e} {status}")
            if diff > tol:
                failures.append(f"{name}/{side}")
    print(f"worst {worst:.2e} over {len(names)} checkpoints (tolerance {tol:.0e})")
    return 1 if failures else 0


def check_rm(model_dir, inputs, tol, adapter=None):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager").eval().float()
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    t = load_file(inputs)
    with torch.no_grad():
        ours = model(input_ids=t["ids"], attention_mask=t["mask"]).logits[:, 0].float()
    diff = (ours - t["rewards"]).abs().max().item()
    print(f"reward model: max |Δreward| = {diff:.2e} over {len(ours)} sequences (tolerance {tol:.0e})")
    return 0 if diff <= tol else 1


def check_lora(base_dir, adapter_dir, inputs, tol):
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager").eval().float()
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    t = load_file(inputs)
    with torch.no_grad():
        ours = model(input_ids=t["ids"], attention_mask=t["mask"]).logits.float()
    keep = t["mask"].bool()
    diff = (ours[keep] - t["logits"][keep]).abs().max().item()
    print(f"lora: max |Δlogit| = {diff:.2e} (tolerance {tol:.0e})")
    return 0 if diff <= tol else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make")
    mk.add_argument("--out", required=True)
    ck = sub.add_parser("check")
    ck.add_argument("--root", required=True)
    ck.add_argument("--tol", type=float, default=1e-4)
    rm = sub.add_parser("check-rm")
    rm.add_argument("--model", required=True)
    rm.add_argument("--inputs", required=True)
    rm.add_argument("--tol", type=float, default=1e-4)
    rm.add_argument("--adapter", help="a PEFT LoRA adapter (SEQ_CLS) to apply to the model first")
    lo = sub.add_parser("check-lora")
    lo.add_argument("--base", required=True)
    lo.add_argument("--adapter", required=True)
    lo.add_argument("--inputs", required=True)
    lo.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.cmd == "make":
        make(args.out)
        return 0
    if args.cmd == "check-lora":
        return check_lora(args.base, args.adapter, args.inputs, args.tol)
    if args.cmd == "check-rm":
        return check_rm(args.model, args.inputs, args.tol, args.adapter)
    return check(args.root, args.tol)


if __name__ == "__main__":
    sys.exit(main())

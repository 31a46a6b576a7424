"""bf16 parity of rrlhf's decoder with transformers on one device (used by bench/gpu_check.sh).

Builds a random Llama with transformers (hidden 256, 4 layers, 8 / 4 heads, vocab 4096,
untied), saves it to --out, and computes logits of the same deterministic ids (rrlhf-bench's
`ids` with salt 3) four ways on --device: transformers in f32 (the reference) and bf16, and
rrlhf in f32 and bf16 (`rrlhf-bench --logits-out`). Passes when rrlhf f32 matches the reference
within --f32-tol and rrlhf bf16's error against the reference is at most twice transformers
bf16's own (bf16 rounding, not a bug, separates the two). Prints one JSON object.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def ids(rows, length, vocab, salt):
    return torch.tensor(
        [[2 + (r * 7919 + t * 104729 + salt) % (vocab - 2) for t in range(length)] for r in range(rows)],
        dtype=torch.long,
    )


def rrlhf_logits(bench, model_dir, device, dtype, rows, length):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.safetensors")
        subprocess.run(
            [bench, "--model", model_dir, "--device", device, "--dtype", dtype, "--batch", str(rows),
             "--train-len", str(length), "--logits-out", out],
            check=True,
        )
        return load_file(out)["logits"].float()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True, help="where the random checkpoint is written")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--f32-tol", type=float, default=1e-3)
    ap.add_argument("--rrlhf-bench", default=os.path.join(ROOT, "target", "release", "rrlhf-bench"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=False, rms_norm_eps=1e-6)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(args.out, safe_serialization=True)
    x = ids(args.rows, args.length, cfg.vocab_size, 3).to(args.device)
    with torch.no_grad():
        ref = model.to(args.device, torch.float32)(input_ids=x).logits.float().cpu()
        hf_bf16 = model.to(args.device, torch.bfloat16)(input_ids=x).logits.float().cpu()
    ours_f32 = rrlhf_logits(args.rrlhf_bench, args.out, args.device, "f32", args.rows, args.length)
    ours_bf16 = rrlhf_logits(args.rrlhf_bench, args.out, args.device, "bf16", args.rows, args.length)
    err = lambda a: (a - ref).abs().max().item()
    report = {
        "device": args.device,
        "rrlhf_f32_max_abs_err": err(ours_f32),
        "transformers_bf16_max_abs_err": err(hf_bf16),
        "rrlhf_bf16_max_abs_err": err(ours_bf16),
        "logit_scale": ref.abs().max().item(),
    }
    ok = report["rrlhf_f32_max_abs_err"] <= args.f32_tol and report["rrlhf_bf16_max_abs_err"] <= 2 * report["transformers_bf16_max_abs_err"] + 1e-6
    report["pass"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

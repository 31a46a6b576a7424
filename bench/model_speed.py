"""Speed of rrlhf's model core against Hugging Face transformers, in one run.

Builds one random checkpoint with transformers (the `small` preset of `rrlhf model init`:
Llama, hidden 256, 4 layers, 8 heads / 4 KV heads, vocab 4096, tied embeddings), then for each
thread count measures on both implementations, with the same batch and token ids:

  generate   greedy KV-cache decoding of --new-tokens tokens for --batch prompts of --prompt-len
  train      forward + backward of the next-token loss on --batch × --train-len tokens

and prints tokens/s and the ratio rrlhf / transformers (> 1: rrlhf is faster). Medians of
--repeats timed calls after one warm-up. Run via `make bench` (builds the release binary first).

For generation it also states the compute bound: the machine's sgemm peak at that thread count
(a 2048² f32 matmul, the best case for the same MKL kernels) divided by the model's FLOPs per
generated token (2 per weight of every linear layer and the LM head, plus attention over the
mean context), and the share of it that rrlhf reaches.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4),
}


def ids(rows, length, vocab, salt):
    """Same deterministic ids as rrlhf-bench's `ids`."""
    return torch.tensor(
        [[2 + (r * 7919 + t * 104729 + salt) % (vocab - 2) for t in range(length)] for r in range(rows)],
        dtype=torch.long,
    )


def median_secs(repeats, fn):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure_transformers(model, args, vocab):
    prompts = ids(args.batch, args.prompt_len, vocab, 1)
    mask = torch.ones_like(prompts)

    def gen():
        with torch.no_grad():
            out = model.generate(
                input_ids=prompts,
                attention_mask=mask,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )
        assert out.shape[1] == args.prompt_len + args.new_tokens

    seqs = ids(args.batch, args.train_len, vocab, 2)

    def train():
        logits = model(input_ids=seqs).logits.float()
        logp = logits[:, :-1].log_softmax(-1).gather(-1, seqs[:, 1:].unsqueeze(-1)).squeeze(-1)
        loss = -logp.mean()
        model.zero_grad(set_to_none=False)
        loss.backward()

    gen_s = median_secs(args.repeats, gen)
    train_s = median_secs(args.repeats, train)
    return {
        "impl": "transformers",
        "generate_tokens_per_s": args.batch * args.new_tokens / gen_s,
        "train_tokens_per_s": args.batch * args.train_len / train_s,
        "generate_s": gen_s,
        "train_s": train_s,
    }


def peak_flops(repeats=5):
    """f32 FLOP/s of a 2048 × 2048 matmul at the current thread count (median of `repeats`)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    secs = median_secs(repeats, lambda: torch.mm(a, b))
    return 2 * 2048**3 / secs


def flops_per_token(model, args):
    """Matmul FLOPs to generate one token: every linear weight once, plus attention scores and
    the weighted sum over the mean context (prompt + half the new tokens)."""
    cfg = model.config
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    context = args.prompt_len + args.new_tokens / 2
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    attention = 2 * 2 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * context
    return 2 * linear + attention


def measure_rrlhf(model_dir, args, threads):
    cmd = [
        args.rrlhf_bench, "--model", model_dir, "--threads", str(threads), "--batch", str(args.batch),
        "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
        "--train-len", str(args.train_len), "--repeats", str(args.repeats),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--train-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rrlhf-bench", default=os.path.join(ROOT, "target", "release", "rrlhf-bench"))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    vocab = 4096
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, tie_word_embeddings=True, max_position_embeddings=2048, **SIZES[args.size])
    model = LlamaForCausalLM(cfg).eval()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            ours = measure_rrlhf(tmp, args, threads)
            theirs = measure_transformers(model, args, vocab)
            bound = peak_flops() / flops_per_token(model, args)
            results.append({"threads": threads, "rrlhf": ours, "transformers": theirs, "generate_bound": bound})

    print(f"model {args.size} Llama, batch {args.batch}, generate {args.prompt_len}+{args.new_tokens} tokens, "
          f"train length {args.train_len}, torch {torch.__version__}, median of {args.repeats}")
    print("| threads | task | rrlhf tok/s | transformers tok/s | ratio | compute bound tok/s | rrlhf ÷ bound |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for task in ("generate", "train"):
            a = r["rrlhf"][f"{task}_tokens_per_s"]
            b = r["transformers"][f"{task}_tokens_per_s"]
            bound = f"{r['generate_bound']:,.0f} | {a / r['generate_bound']:.2f}" if task == "generate" else "— | —"
            print(f"| {r['threads']} | {task} | {a:,.0f} | {b:,.0f} | {a / b:.2f} | {bound} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

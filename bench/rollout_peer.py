"""Peer for `rrlhf-rollout-bench`: transformers' `generate` on the same prompt ids and settings.

The prompts (a JSON list of token-id lists, as `rrlhf-rollout-bench --write-prompts` saved them)
are left-padded into batches of `--batch` and sampled at temperature 1 without top-k/top-p
(transformers' default top_k of 50 is switched off) until EOS or `--new-tokens`. Useful tokens
are each row's tokens up to and including its EOS. Prints the median of `--repeats` timed
passes after a warm-up as one JSON object.
"""

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--prompts", required=True)
ap.add_argument("--new-tokens", type=int, default=32)
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
eos, pad = model.config.eos_token_id, model.config.pad_token_id
pad = eos if pad is None else pad
with open(args.prompts) as f:
    prompts = json.load(f)


def batches():
    for i in range(0, len(prompts), args.batch):
        chunk = prompts[i : i + args.batch]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(chunk):
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        yield ids, mask


def useful(new):
    total = 0
    for row in new.tolist():
        total += row.index(eos) + 1 if eos in row else len(row)
    return total


def run():
    tokens = 0
    with torch.no_grad():
        for ids, mask in batches():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=args.new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
            )
            tokens += useful(out[:, ids.shape[1] :])
    return tokens


run()
timed = []
for _ in range(args.repeats):
    start = time.perf_counter()
    tokens = run()
    timed.append((time.perf_counter() - start, tokens))
secs, tokens = sorted(timed)[len(timed) // 2]
print(
    json.dumps(
        {
            "impl": "transformers",
            "threads": args.threads,
            "batch": args.batch,
            "useful_tokens": tokens,
            "secs": secs,
            "tokens_per_s": tokens / secs,
        }
    )
)

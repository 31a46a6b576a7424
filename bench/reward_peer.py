"""Peer for `rrlhf-reward-bench`: transformers scores the same token ids with the same stage-1
reward checkpoint (opened as *ForSequenceClassification), batch by batch, and prints samples/s:
length-sorted batches (its best case), or with `--arrival-order` batches in the order given
(what a Python reward server such as OpenRLHF's `serve_rm` does with requests as they come)."""

import argparse
import json
import time

import torch
from transformers import AutoModelForSequenceClassification

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--ids", required=True)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument(
    "--arrival-order",
    action="store_true",
    help="batches in the order given, as a server fed requests as they come (default: length-sorted)",
)
args = ap.parse_args()
torch.set_num_threads(args.threads)
model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
with open(args.ids) as f:
    seqs = json.load(f)
# Sorted by length like the Rust scorer, so both pad the same way (unless the batches stand for
# what a server receives, in arrival order).
if not args.arrival_order:
    seqs.sort(key=len)


def run():
    with torch.no_grad():
        for i in range(0, len(seqs), args.batch):
            chunk = seqs[i : i + args.batch]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, s in enumerate(chunk):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            model(input_ids=ids, attention_mask=mask)


run_small = seqs[: args.batch]
with torch.no_grad():
    model(input_ids=torch.tensor([run_small[0]]))
start = time.perf_counter()
run()
print(len(seqs) / (time.perf_counter() - start))

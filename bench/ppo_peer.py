"""Peer for `rrlhf-ppo-bench`: TRL 1.12.0's PPO (`trl.experimental.ppo.PPOTrainer`) on the same work.

It loads the checkpoints and prompts that `rrlhf-ppo-bench --prepare-only` wrote (the policy as
the actor and a frozen copy as the reference, the one-head reward model as both the reward model
and the value model's start), runs PPO steps of one experience batch of all prompts, sampled at
temperature 1 to exactly `--new-tokens` tokens (no stop token), in `--mini-batches` updates of one
epoch, and prints the median step and its generate / score / train split as one JSON object.

The split is read by wrapping TRL's own functions, not by changing its loop: generation is
`batch_generation`; scoring is from its end to the first forward pass with gradients (the
reference log-probs, values and rewards); training is from there to the step's end.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedTokenizerFast,
    TrainerCallback,
)
from trl.experimental.ppo import PPOConfig, PPOTrainer
from trl.experimental.ppo import ppo_trainer as trl_ppo

ap = argparse.ArgumentParser()
ap.add_argument("--models", required=True, help="the models/ directory of rrlhf-ppo-bench")
ap.add_argument("--new-tokens", type=int, default=32)
ap.add_argument("--mini-batches", type=int, default=4)
ap.add_argument("--epochs", type=int, default=1)
ap.add_argument("--steps", type=int, default=5)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument(
    "--rollout-batch",
    type=int,
    default=64,
    help="TRL's local_rollout_forward_batch_size (its default: 64)",
)
ap.add_argument(
    "--gradient-checkpointing",
    action="store_true",
    help="TRL's default; off by default here, since rrlhf does not recompute activations either",
)
args = ap.parse_args()
torch.set_num_threads(args.threads)

policy_dir = os.path.join(args.models, "policy")
reward_dir = os.path.join(args.models, "reward-1")
tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(policy_dir, "tokenizer.json"))
config = json.load(open(os.path.join(policy_dir, "config.json")))
tokenizer.pad_token_id = config["pad_token_id"]
tokenizer.eos_token_id = config["eos_token_id"]
with open(os.path.join(args.models, "prompts.jsonl")) as f:
    prompts = [json.loads(line)["prompt_ids"] for line in f if line.strip()]
n, prompt_len = len(prompts), len(prompts[0])
assert all(len(p) == prompt_len for p in prompts), "the peer needs prompts of one length"

policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
ref_policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
value_model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1, dtype=torch.float32)
reward_model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1, dtype=torch.float32)

marks = {"gen": [], "train_start": [], "step_end": []}
original_generation = trl_ppo.batch_generation
original_forward = trl_ppo.forward


def timed_generation(*a, **kw):
    started = time.perf_counter()
    out = original_generation(*a, **kw)
    width = out[0].shape[1]
    assert width == prompt_len + args.new_tokens, f"responses stopped early: {width - prompt_len} tokens"
    marks["gen"].append((started, time.perf_counter()))
    return out


def timed_forward(*a, **kw):
    if torch.is_grad_enabled() and len(marks["train_start"]) < len(marks["gen"]):
        marks["train_start"].append(time.perf_counter())
    return original_forward(*a, **kw)


trl_ppo.batch_generation = timed_generation
trl_ppo.forward = timed_forward


class StepTimer(TrainerCallback):
    def on_step_end(self, *_a, **_kw):
        marks["step_end"].append(time.perf_counter())


with tempfile.TemporaryDirectory() as out:
    ppo_args = PPOConfig(
        output_dir=out,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=args.gradient_checkpointing,
        fp16=False,
        seed=0,
        learning_rate=1e-5,
        # One rollout of all prompts per step, cut into `mini_batches` updates of one micro-batch.
        per_device_train_batch_size=n,
        gradient_accumulation_steps=1,
        num_mini_batches=args.mini_batches,
        num_ppo_epochs=args.epochs,
        total_episodes=n * args.steps,
        local_rollout_forward_batch_size=args.rollout_batch,
        response_length=args.new_tokens,
        temperature=1.0,
        stop_token=None,
        num_sample_generations=0,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = PPOTrainer(
        args=ppo_args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=Dataset.from_dict({"input_ids": prompts}),
        callbacks=[StepTimer()],
    )
    trainer.train()

steps = []
previous_end = None
for (gen_start, gen_end), train_start, step_end in zip(marks["gen"], marks["train_start"], marks["step_end"]):
    steps.append(
        {
            # From the previous step's end, so TRL's own work between steps counts too.
            "step": step_end - (previous_end or gen_start),
            "generate": gen_end - gen_start,
            "score": train_start - gen_end,
            "train": step_end - train_start,
        }
    )
    previous_end = step_end
assert len(steps) == args.steps, f"timed {len(steps)} of {args.steps} steps"
timed = steps[1:]  # the first step is a warm-up
med = lambda key: statistics.median(s[key] for s in timed)  # noqa: E731
print(
    json.dumps(
        {
            "impl": "trl",
            "threads": args.threads,
            "steps_timed": len(timed),
            "step_secs": med("step"),
            "generate_secs": med("generate"),
            "score_secs": med("score"),
            "train_secs": med("train"),
        }
    )
)

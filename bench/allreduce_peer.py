"""Gloo all-reduce through rrlhf-dist against torch.distributed, in one run.

Both sides sum the gradient list of the same Llama-shaped model (`small` preset by default:
vocab 4096, hidden 256, ffn 688, 4 layers: 38 tensors, 4.21 M floats) across 2 ranks on
loopback, with 1 intra-op thread, timing the median of --repeats calls after a warm-up, each
call preceded by a barrier:

  rrlhf        rrlhf-allreduce-bench: one packed c10d all-reduce per list (what data-parallel
               training in rrlhf does every update)
  torch packed torch.distributed: flatten the list, one all_reduce, copy back (what DDP's
               buckets amount to for a list this size)
  torch each   torch.distributed: one all_reduce per tensor

and prints MB/s and the ratio rrlhf / torch (> 1: rrlhf faster). Run after
`cargo build --release --bin rrlhf-allreduce-bench`.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shapes(a):
    """The same list as rrlhf-allreduce-bench's `shapes`."""
    h, f = a.hidden, a.ffn
    out = [(a.vocab, h)]
    for _ in range(a.layers):
        out += [(h, h)] * 4 + [(f, h), (f, h), (h, f), (h,), (h,)]
    out.append((h,))
    return out


def torch_rank(rank, a, port, mode, queue):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=a.world)
    grads = [torch.ones(s) for s in shapes(a)]

    def call():
        if mode == "packed":
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        else:
            for g in grads:
                dist.all_reduce(g)

    call()
    times = []
    for _ in range(a.repeats):
        dist.barrier()
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    expected = float(a.world) ** (1 + a.repeats)
    assert abs(grads[0][0, 0].item() - expected) < 1e-3 * expected, "wrong sum"
    if rank == 0:
        queue.put(statistics.median(times))
    dist.destroy_process_group()


def run_torch(a, mode):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=torch_rank, args=(r, a, port, mode, queue)) for r in range(a.world)]
    for p in procs:
        p.start()
    result = queue.get(timeout=300)
    for p in procs:
        p.join()
        assert p.exitcode == 0, f"torch rank failed ({mode})"
    return result


def run_rrlhf(a):
    exe = os.path.join(ROOT, "target", "release", "rrlhf-allreduce-bench")
    store = f"127.0.0.1:{free_port()}"
    args = ["--world", str(a.world), "--store", store, "--repeats", str(a.repeats),
            "--vocab", str(a.vocab), "--hidden", str(a.hidden), "--ffn", str(a.ffn), "--layers", str(a.layers)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([exe, "--rank", str(r)] + args, stdout=subprocess.PIPE, env=env, text=True)
             for r in range(a.world)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p in procs:
        assert p.returncode == 0, "rrlhf rank failed"
    return json.loads(outs[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=688)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    ours = run_rrlhf(a)
    mb = ours["elements"] * 4 / 1e6
    rows = [("rrlhf (packed)", ours["median_secs"]),
            ("torch packed", run_torch(a, "packed")),
            ("torch each", run_torch(a, "each"))]
    print(f"{ours['tensors']} tensors, {ours['elements']:,} floats ({mb:.1f} MB), {a.world} ranks, gloo, 1 thread")
    print(f"{'':16} {'median ms':>10} {'MB/s':>8} {'rrlhf / this':>13}")
    for name, secs in rows:
        print(f"{name:16} {secs * 1e3:10.2f} {mb / secs:8.0f} {secs / ours['median_secs']:13.2f}")


if __name__ == "__main__":
    sys.exit(main())

"""An independent client of the rrlhf reward service, written with Python's grpcio.

It compiles the repository's .proto files with grpcio-tools at run time (nothing generated is
committed), calls Info, Score and ScoreStream on a running service, and checks the answers'
invariants: one score per sample in order, K heads, nominal = μ of the smallest-σ head,
min/max/mean over the heads, reward = λ·nominal + (1 − λ)·min for the trade-off, and
INVALID_ARGUMENT naming the field for a bad request. Prints "N passed, 0 failed".

    RRLHF_TOKEN=T python python/grpc_client/score_client.py --addr 127.0.0.1:50061
    python python/grpc_client/score_client.py --addr 127.0.0.1:50061 --token-file /run/secrets/token

The bearer token (when the service wants one) comes from RRLHF_TOKEN or a file, never from the
command line, where anyone on the machine can read it.
"""

import argparse
import importlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_ROOT = os.path.join(ROOT, "proto")
PROTOS = ["rrlhf/common/v1/common.proto", "rrlhf/reward/v1/reward.proto"]


def compile_protos(out_dir):
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    if protoc.main(args + PROTOS) != 0:
        raise SystemExit("grpcio-tools could not compile the protos")
    sys.path.insert(0, out_dir)
    return (
        importlib.import_module("rrlhf.reward.v1.reward_pb2"),
        importlib.import_module("rrlhf.reward.v1.reward_pb2_grpc"),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--token-file", help="a file holding the bearer token (else RRLHF_TOKEN)")
    args = ap.parse_args()
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    else:
        token = os.environ.get("RRLHF_TOKEN", "")
    with tempfile.TemporaryDirectory() as tmp:
        pb, pb_grpc = compile_protos(tmp)
        metadata = [("authorization", f"Bearer {token}")] if token else []
        checks = run_checks(pb, pb_grpc, args.addr, metadata)
    failed = [name for name, ok in checks if not ok]
    for name, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def run_checks(pb, pb_grpc, addr, metadata):
    checks = []
    with grpc.insecure_channel(addr) as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        info = stub.Info(pb.InfoRequest(), metadata=metadata, timeout=30)
        checks.append(("info reports heads and max length", info.heads >= 1 and info.max_length > 0))

        samples = [
            pb.Sample(id=f"q{i}", prompt=f"\n\nHuman: question number {i}?\n\nAssistant:", response=" a reply" * (i + 1))
            for i in range(4)
        ]
        resp = stub.Score(pb.ScoreRequest(samples=samples, strategy="tradeoff", **{"lambda": 0.25}), metadata=metadata, timeout=30)
        checks.append(("one score per sample, in order", [s.id for s in resp.scores] == [s.id for s in samples]))
        checks.append(("strategy is spelled out", resp.strategy == "tradeoff:0.25"))
        ok_heads = ok_nominal = ok_stats = ok_reward = True
        for s in resp.scores:
            mus = [h.mu for h in s.heads]
            sigmas = [h.sigma for h in s.heads]
            ok_heads &= len(s.heads) == info.heads and all(x > 0 for x in sigmas if info.kind == "brme")
            ok_nominal &= sigmas[s.nominal_head] == min(sigmas) and abs(s.nominal - mus[s.nominal_head]) < 1e-6
            ok_stats &= abs(s.min - min(mus)) < 1e-6 and abs(s.max - max(mus)) < 1e-6 and abs(s.mean - sum(mus) / len(mus)) < 1e-5
            ok_reward &= abs(s.reward - (0.25 * s.nominal + 0.75 * s.min)) < 1e-5
        checks += [("K heads with σ > 0", ok_heads), ("nominal = μ of smallest σ", ok_nominal),
                    ("min / max / mean over heads", ok_stats), ("trade-off reward", ok_reward)]

        requests = [pb.ScoreRequest(samples=[samples[i]], strategy="min") for i in range(3)]
        streamed = list(stub.ScoreStream(iter(requests), metadata=metadata, timeout=30))
        checks.append(("ScoreStream answers each request in order",
                       [r.scores[0].id for r in streamed] == ["q0", "q1", "q2"]))
        checks.append(("ScoreStream min equals Score min",
                       all(abs(r.scores[0].reward - resp.scores[i].min) < 1e-5 for i, r in enumerate(streamed))))

        try:
            stub.Score(pb.ScoreRequest(samples=[pb.Sample(prompt="x", response="")]), metadata=metadata, timeout=30)
            checks.append(("empty response is rejected", False))
        except grpc.RpcError as e:
            checks.append(("empty response is INVALID_ARGUMENT naming the field",
                           e.code() == grpc.StatusCode.INVALID_ARGUMENT and "samples[0].response" in e.details()))
    return checks


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""fewshot's CPU training steps against the PyTorch reference, side by side, in one sitting.

Runs, in turn and `--rounds` times (A B A B ...), `fewshot bench --device cpu --only
steps,inference --json` and the PyTorch reference (`fewshot_torch.py --mode speed`) on the same
configurations and thread count, then prints each configuration's median step time for both,
the ratio fewshot / PyTorch of every round, and the median ratio. Ratios, not absolute times,
are what to compare: these machines drift between runs.

Usage (after the setup in ../shared/peers/README.md):
    python3 scripts/vs-torch.py --python ~/.venvs/fewshot-peers/bin/python \
        --peer ../shared/peers/fewshot_torch.py [--rounds 2] [--threads 2] [--out vs-torch.json]
Needs a release build: `cargo build --release`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

# fewshot step configuration -> arguments of the PyTorch reference.
CONFIGS = {
    "protonet-60w5s5q": ["--method", "protonet", "--way", "60", "--shot", "5", "--query", "5"],
    "protonet-60w1s5q": ["--method", "protonet", "--way", "60", "--shot", "1", "--query", "5"],
    "protonet-20w1s15q": ["--method", "protonet", "--way", "20", "--shot", "1", "--query", "15"],
    "protonet-5w1s15q": ["--method", "protonet", "--way", "5", "--shot", "1", "--query", "15"],
    # fewshot's siamese-128 step uses the contrastive loss.
    "siamese-128": ["--method", "siamese", "--loss", "contrastive", "--pairs", "128"],
}

INFERENCE = """
import json, sys, torch
sys.path.insert(0, {peer_dir!r})
import fewshot_torch as ft
torch.set_num_threads({threads})
print(json.dumps(ft.speed_inference(n=1000)))
"""


def run(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return out.stdout


def fewshot_round(binary, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    report = json.loads(
        run([binary, "bench", "--device", "cpu", "--only", "steps,inference", "--json"], env)
    )
    steps = {s["config"]: s["median_ms"] for s in report["steps"] if s["device"] == "cpu"}
    inf = [i["images_per_s"] for i in report.get("inference", []) if i["device"] == "cpu"]
    return steps, (inf[0] if inf else None)


def torch_round(python, peer, threads):
    steps = {}
    for name, args in CONFIGS.items():
        lines = run([python, peer, "--mode", "speed", "--threads", str(threads), *args])
        rec = json.loads(lines.strip().splitlines()[-1])
        steps[name] = rec["median_s"] * 1000.0
    inf = json.loads(
        run(
            [
                python,
                "-c",
                INFERENCE.format(peer_dir=os.path.dirname(os.path.abspath(peer)), threads=threads),
            ]
        ).strip().splitlines()[-1]
    )
    return steps, inf["images_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--python", required=True, help="the Python that has torch")
    p.add_argument("--peer", required=True, help="path to fewshot_torch.py")
    p.add_argument("--fewshot", default="target/release/fewshot")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write every round's figures here as JSON")
    a = p.parse_args()

    rounds = []
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}: fewshot ...", file=sys.stderr, flush=True)
        fs = fewshot_round(a.fewshot, a.threads)
        print(f"round {r + 1}/{a.rounds}: pytorch ...", file=sys.stderr, flush=True)
        pt = torch_round(a.python, a.peer, a.threads)
        rounds.append({"fewshot": fs[0], "pytorch": pt[0], "fewshot_ips": fs[1], "pytorch_ips": pt[1]})

    print(f"{a.threads} threads, {a.rounds} rounds (fewshot then PyTorch in each); median step ms")
    print(f"{'config':<20}{'fewshot':>10}{'pytorch':>10}{'ratio':>8}   per-round ratios")
    summary = {}
    for name in CONFIGS:
        f = [r["fewshot"][name] for r in rounds]
        t = [r["pytorch"][name] for r in rounds]
        ratios = [x / y for x, y in zip(f, t)]
        med = statistics.median(ratios)
        summary[name] = {"fewshot_ms": statistics.median(f), "pytorch_ms": statistics.median(t), "ratio": med}
        print(
            f"{name:<20}{statistics.median(f):>10.1f}{statistics.median(t):>10.1f}{med:>8.2f}   "
            + " ".join(f"{x:.2f}" for x in ratios)
        )
    fi = [r["fewshot_ips"] for r in rounds if r["fewshot_ips"]]
    ti = [r["pytorch_ips"] for r in rounds]
    if fi:
        print(
            f"{'inference img/s':<20}{statistics.median(fi):>10.0f}{statistics.median(ti):>10.0f}"
            f"{statistics.median(ti) / statistics.median(fi):>8.2f}   (ratio: time per image)"
        )
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"threads": a.threads, "rounds": rounds, "summary": summary}, fh, indent=1)


if __name__ == "__main__":
    main()

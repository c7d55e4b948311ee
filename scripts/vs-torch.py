#!/usr/bin/env python3
"""fewshot's CPU training steps against the PyTorch reference, side by side, in one sitting.

Runs, in turn and `--rounds` times (B A B A ...), the PyTorch reference (`fewshot_torch.py
--mode speed`) and then `fewshot bench --device cpu --only steps,inference --json --reference`
on that round's PyTorch records (fewshot matches the records to its rows and computes the
ratios), on the same configurations and thread count; then prints each configuration's median
step time for both, the ratio fewshot / PyTorch of every round, and the median ratio. Ratios, not absolute times,
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
import tempfile

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


def fewshot_round(binary, threads, reference):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    report = json.loads(
        run(
            [binary, "bench", "--device", "cpu", "--only", "steps,inference", "--json",
             "--reference", reference],
            env,
        )
    )
    return report


def torch_round(python, peer, threads, path):
    """Runs the peer on every configuration and on inference; writes its records as JSON lines."""
    records = []
    for args in CONFIGS.values():
        lines = run([python, peer, "--mode", "speed", "--threads", str(threads), *args])
        records.append(json.loads(lines.strip().splitlines()[-1]))
    records.append(
        json.loads(
            run(
                [
                    python,
                    "-c",
                    INFERENCE.format(
                        peer_dir=os.path.dirname(os.path.abspath(peer)), threads=threads
                    ),
                ]
            ).strip().splitlines()[-1]
        )
    )
    with open(path, "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in records))


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
        ref = os.path.join(tempfile.mkdtemp(prefix="vs-torch-"), "torch.jsonl")
        print(f"round {r + 1}/{a.rounds}: pytorch ...", file=sys.stderr, flush=True)
        torch_round(a.python, a.peer, a.threads, ref)
        print(f"round {r + 1}/{a.rounds}: fewshot ...", file=sys.stderr, flush=True)
        report = fewshot_round(a.fewshot, a.threads, ref)
        rounds.append(
            {
                "steps": {s["config"]: s for s in report["steps"]},
                "inference": report["inference"][0],
            }
        )

    print(f"{a.threads} threads, {a.rounds} rounds (PyTorch then fewshot in each); median step ms")
    print(f"{'config':<20}{'fewshot':>10}{'pytorch':>10}{'ratio':>8}   per-round ratios")
    summary = {}
    for name in CONFIGS:
        rows = [r["steps"][name] for r in rounds]
        f = [row["median_ms"] for row in rows]
        t = [row["reference_ms"] for row in rows]
        ratios = [row["ratio_to_reference"] for row in rows]
        med = statistics.median(ratios)
        summary[name] = {"fewshot_ms": statistics.median(f), "pytorch_ms": statistics.median(t), "ratio": med}
        print(
            f"{name:<20}{statistics.median(f):>10.1f}{statistics.median(t):>10.1f}{med:>8.2f}   "
            + " ".join(f"{x:.2f}" for x in ratios)
        )
    inf = [r["inference"] for r in rounds]
    print(
        f"{'inference img/s':<20}{statistics.median(i['images_per_s'] for i in inf):>10.0f}"
        f"{statistics.median(i['reference_images_per_s'] for i in inf):>10.0f}"
        f"{statistics.median(i['ratio_to_reference'] for i in inf):>8.2f}   (ratio: time per image)"
    )
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"threads": a.threads, "rounds": rounds, "summary": summary}, fh, indent=1)


if __name__ == "__main__":
    main()

"""Training throughput of the harness (ismod.train.fit) against a minimal hand-written loop.

    .venv/bin/python benchmarks/harness_throughput.py [--model small_cnn] [--steps 30] [--rounds 3] [--device cpu]

Same model, batch, augmentation (crop + flip on the device) and optimiser; the two alternate so that
a busy machine slows both. Prints images/s of each and the ratio.
"""

import argparse
import json

from ismod.bench import harness_throughput, machine

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="small_cnn")
parser.add_argument("--batch-size", type=int, default=512)
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--device", default="cpu")
args = parser.parse_args()

res = harness_throughput(
    args.model, batch_size=args.batch_size, steps=args.steps, rounds=args.rounds, device=args.device
)
print(f"machine: {machine()}")
print(json.dumps({k: round(v, 4) for k, v in res.items()}, indent=1))

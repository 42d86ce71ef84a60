"""Cost of scoring samples: loss only, the upper bound, exact per-sample gradient norms (vmap, loop).

    .venv/bin/python benchmarks/scoring_cost.py [--models small_cnn resnet18] [--batch-size 1024] [--device cpu]

The bound should cost about one forward pass; exact norms cost per-sample backward passes.
"""

import argparse
import json

from ismod.bench import machine, scoring_costs

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--models", nargs="+", default=["small_cnn", "resnet18"])
parser.add_argument("--batch-size", type=int, default=1024)
parser.add_argument("--loop-samples", type=int, default=32)
parser.add_argument("--chunk-size", type=int, default=64)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--device", default="cpu")
args = parser.parse_args()

print(f"machine: {machine()}")
for name in args.models:
    res = scoring_costs(
        name,
        batch_size=args.batch_size,
        loop_samples=args.loop_samples,
        chunk_size=args.chunk_size,
        repeats=args.repeats,
        device=args.device,
    )
    print(name, f"B={args.batch_size}", json.dumps({k: round(v, 4) for k, v in res.items()}))
